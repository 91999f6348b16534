#!/bin/bash
# relion-spot node bootstrap: the user data of every Slurm CLOUD node (GPU and CPU groups).
#
# A template: relion_spot.node.bootstrap.render() fills these string.Template placeholders
# (written here without their dollar sign, which the renderer would replace):
#   cluster_name                  the cluster (value of the cluster tag)
#   file_system_id                EFS file system id (fs-...)
#   data_access_point_id          EFS access point for /data (fsap-...)
#   containers_access_point_id    EFS access point for /containers, the SIF cache (fsap-...)
#   slurm_image                   the Slurm image URI (the controller's image: one Slurm version)
#   controller                    slurmctld as host[:port] (the controller's Cloud Map name)
#   key_parameter_arn             ARN of the auth/slurm key's SSM SecureString parameter
#   spot_events_table             DynamoDB table for spot reclaim events ('' for none)
#   intake_table                  the job intake's table, where the node's job-report forwarder
#                                 (root, beside slurmd) puts the progress its jobs report
#   stage_read_role               ARN of the role whose session the node's root broker hands a
#                                 staging job to read s3:// ('' when no stage_buckets are set)
#   exchange_role                 ARN of the exchange's job role, whose session the node's root
#                                 broker hands an import job to read the lab's uploads from the
#                                 exchange bucket and an export job to copy results into it
#   exchange_bucket               the cluster's results exchange bucket (relion-spot stage and
#                                 relion-spot pull)
#   node_tag_key                  the node-name tag key (filled from relion_spot.tags)
#   partition_tag_key             the partition tag key (filled from relion_spot.tags; the
#                                 launch template tags every instance with its partition)
#   cloudwatch_agent_config       CloudWatch agent config for GPU metrics (filled from
#                                 assets/slurm/cloudwatch-agent.json with the cluster's name)
# Every other dollar sign is doubled: the renderer turns two into one.
#
# What it does, in order: learn the node name from this instance's own tags (IMDSv2, instance
# metadata tags on; the resume program tags the instance seconds after launch, so it waits);
# format the local NVMe instance store as /scratch (RAID0 over several); mount EFS with TLS and
# IAM through the access points; shut the metadata service to every non-root user (a firewall
# rule by uid, before any job can run here); start slurmd from the Slurm image with the GPUs, /scratch and
# EFS passed in (the image's entrypoint fetches the Slurm key from Parameter Store and resets the
# signal mask before exec'ing slurmd -b); start the spot watcher inside that container, where
# scontrol reaches the controller through slurmd's configless cache; on a GPU node, start the
# CloudWatch agent's GPU metrics for the cluster dashboard (best effort: a node without them
# still runs jobs).
# A failure stops here with one line on the console; the instance is then terminated by
# ResumeFailProgram when ResumeTimeout runs out, and the job requeued.
set -euo pipefail

readonly CLUSTER_NAME='${cluster_name}'
readonly FILE_SYSTEM_ID='${file_system_id}'
readonly DATA_ACCESS_POINT='${data_access_point_id}'
readonly CONTAINERS_ACCESS_POINT='${containers_access_point_id}'
readonly SLURM_IMAGE='${slurm_image}'
readonly CONTROLLER='${controller}'
readonly KEY_PARAMETER_ARN='${key_parameter_arn}'
readonly SPOT_EVENTS_TABLE='${spot_events_table}'
readonly INTAKE_TABLE='${intake_table}'
readonly STAGE_READ_ROLE='${stage_read_role}'
readonly EXCHANGE_ROLE='${exchange_role}'
readonly EXCHANGE_BUCKET='${exchange_bucket}'
readonly NODE_TAG_KEY='${node_tag_key}'
readonly PARTITION_TAG_KEY='${partition_tag_key}'

readonly IMDS=http://169.254.169.254
readonly CONTAINER=relion-spot-slurmd
readonly LOG_DIR=/var/log/relion-spot
readonly TAG_WAIT_SECONDS=300

log() { echo "relion-spot bootstrap: $$*" >&2; }
die() {
  log "FAILED: $$*"
  exit 1
}

TOKEN=$$(curl -fsS -X PUT "$$IMDS/latest/api/token" \
  -H "X-aws-ec2-metadata-token-ttl-seconds: 21600") || die "no IMDSv2 token"
readonly TOKEN
imds() { curl -fsS -H "X-aws-ec2-metadata-token: $$TOKEN" "$$IMDS/latest/meta-data/$$1"; }

REGION=$$(imds placement/region) || die "no region from IMDS"
INSTANCE_ID=$$(imds instance-id) || die "no instance id from IMDS"
readonly REGION INSTANCE_ID

# --- 1. Node name, from the tag the resume program sets right after launch ---------------------
NODE_NAME=""
waited=0
while [ -z "$$NODE_NAME" ]; do
  NODE_NAME=$$(imds "tags/instance/$$NODE_TAG_KEY" 2>/dev/null || true)
  if [ -z "$$NODE_NAME" ]; then
    [ "$$waited" -lt "$$TAG_WAIT_SECONDS" ] ||
      die "$$INSTANCE_ID has no $$NODE_TAG_KEY tag after $$TAG_WAIT_SECONDS s (metadata tags off?)"
    sleep 5
    waited=$$((waited + 5))
  fi
done
case "$$NODE_NAME" in
  *[!A-Za-z0-9-]*) die "tag $$NODE_TAG_KEY = '$$NODE_NAME' is not a Slurm node name" ;;
esac
readonly NODE_NAME
PARTITION=$$(imds "tags/instance/$$PARTITION_TAG_KEY" 2>/dev/null || true)
readonly PARTITION
log "$$INSTANCE_ID is node $$NODE_NAME of $$CLUSTER_NAME (partition $${PARTITION:-?}) in $$REGION"

# --- 2. Tools the AMI may lack (the Deep Learning AMI has Docker and the NVIDIA toolkit) -------
missing=()
command -v mount.efs >/dev/null || missing+=(amazon-efs-utils)
command -v mdadm >/dev/null || missing+=(mdadm)
command -v mkfs.xfs >/dev/null || missing+=(xfsprogs)
command -v docker >/dev/null || missing+=(docker)
command -v iptables >/dev/null || missing+=(iptables-nft)
if [ "$${#missing[@]}" -gt 0 ]; then
  log "installing $${missing[*]}"
  dnf install -y -q "$${missing[@]}" || die "could not install $${missing[*]}"
fi
systemctl enable --now docker >/dev/null || die "docker would not start"

# --- 3. Local NVMe instance store as /scratch (RELION --scratch_dir) ---------------------------
mkdir -p /scratch
devices=()
for block in /sys/block/nvme*n*; do
  [ -e "$$block/device/model" ] || continue
  model=$$(tr -d '[:space:]' <"$$block/device/model")
  if [ "$$model" = "AmazonEC2NVMeInstanceStorage" ]; then
    devices+=("/dev/$${block##*/}")
  fi
done
if mountpoint -q /scratch; then
  log "/scratch already mounted"
elif [ "$${#devices[@]}" -eq 0 ]; then
  log "no instance store: /scratch is a directory on the root volume"
else
  scratch_device=$${devices[0]}
  if [ "$${#devices[@]}" -gt 1 ]; then
    scratch_device=/dev/md/scratch
    mdadm --create "$$scratch_device" --run --level=0 --raid-devices="$${#devices[@]}" \
      "$${devices[@]}" || die "RAID0 over $${devices[*]} failed"
  fi
  mkfs.xfs -f -q "$$scratch_device" || die "mkfs.xfs $$scratch_device failed"
  mount -o noatime "$$scratch_device" /scratch || die "mount $$scratch_device /scratch failed"
  log "/scratch on $${devices[*]}"
fi
chmod 1777 /scratch

# --- 4. EFS over TLS with IAM, through the access points ---------------------------------------
mount_efs() {
  local access_point=$$1 target=$$2 attempt
  mkdir -p "$$target"
  mountpoint -q "$$target" && return 0
  for attempt in 1 2 3 4 5 6; do
    if mount -t efs -o "tls,iam,accesspoint=$$access_point,_netdev" "$$FILE_SYSTEM_ID:/" "$$target"; then
      log "$$target is $$FILE_SYSTEM_ID via $$access_point"
      return 0
    fi
    sleep $$((attempt * 5))
  done
  die "$$FILE_SYSTEM_ID via $$access_point would not mount at $$target"
}
mount_efs "$$DATA_ACCESS_POINT" /data
mount_efs "$$CONTAINERS_ACCESS_POINT" /containers

# --- 5. The metadata service shut to jobs -------------------------------------------------------
# Whoever reaches IMDS can take this instance's role credentials. Only root needs it (this script,
# the spot watcher, the Prolog/Epilog, the job-report forwarder); jobs run as the job user in a
# container on the host network, so one host rule by uid keeps them out, added before slurmd
# exists: every non-root TCP connection to IMDS is reset. The container's entrypoint checks it
# (RELION_SPOT_METADATA_GUARD=verify) and refuses to start slurmd while a job could connect.
imds_rule=(-p tcp -d 169.254.169.254 --dport 80 -m owner ! --uid-owner 0
  -j REJECT --reject-with tcp-reset)
if ! iptables -w 5 -C OUTPUT "$${imds_rule[@]}" 2>/dev/null; then
  iptables -w 5 -I OUTPUT 1 "$${imds_rule[@]}" ||
    die "could not shut the metadata service to non-root users"
fi
log "the metadata service answers root only"

# --- 6. slurmd from the Slurm image ------------------------------------------------------------
registry=$${SLURM_IMAGE%%/*}
case "$$registry" in
  *.dkr.ecr.*)
    aws ecr get-login-password --region "$$REGION" |
      docker login --username AWS --password-stdin "$$registry" >/dev/null ||
      die "could not log in to $$registry"
    ;;
esac
for attempt in 1 2 3 4 5; do
  docker pull -q "$$SLURM_IMAGE" >/dev/null && break
  [ "$$attempt" -lt 5 ] || die "could not pull $$SLURM_IMAGE"
  sleep $$((attempt * 10))
done

gpu_args=()
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpu_args=(--gpus all)
fi
mkdir -p "$$LOG_DIR"
docker rm -f "$$CONTAINER" >/dev/null 2>&1 || true
# Host network: slurmctld reaches slurmd at the instance's own address (it registers from it),
# and the watcher reaches IMDS (hop limit 2). Host IPC: MPI ranks share memory through /dev/shm.
# Jobs run RELION with an unprivileged `apptainer exec` as the job user, which needs exactly:
#   --device /dev/fuse                  squashfuse mounts the SIF (the entrypoint opens the
#                                       device to the job user);
#   --security-opt seccomp=unconfined   user namespaces, which Docker's default seccomp profile
#                                       refuses to a process without CAP_SYS_ADMIN.
# On a CPU node alone, where the image job builds the GPU image into /containers with
# `apptainer build --fakeroot --ignore-subuid` (a root-mapped user namespace):
#   --security-opt systempaths=unconfined   /proc unmasked, so the build's namespace may mount
#                                           its own /proc; GPU nodes never build.
# No added capability and no --privileged: the job user holds none, and root needs none.
# With stage_buckets, the root broker beside slurmd (relion_spot.node.stage_credentials) hands
# the stage reader's session to a staging job on a CPU node and to a Class3D copying its dataset
# from S3 to a GPU node's scratch, each narrowed to the one object the intake accepted.
# Import and export jobs run on CPU nodes alone: the broker hands each one the exchange job
# role's session, narrowed to its own submission, to read a folder `relion-spot stage` uploaded
# to the exchange bucket or to copy a finished job's results there for `relion-spot pull`.
# The SIF cache is read-only on GPU nodes: only the CPU partition's image job writes it, and a job
# RELION runs on a GPU node (on a lab member's inputs) can never replace an image others run.
partition_args=()
containers_volume=/containers:/containers:ro
if [ -n "$$STAGE_READ_ROLE" ]; then
  partition_args+=(-e "RELION_SPOT_STAGE_READ_ROLE=$$STAGE_READ_ROLE")
fi
if [ "$$PARTITION" = cpu ]; then
  containers_volume=/containers:/containers
  partition_args+=(
    --security-opt systempaths=unconfined
    -e "RELION_SPOT_EXCHANGE_ROLE=$$EXCHANGE_ROLE"
    -e "RELION_SPOT_EXCHANGE_BUCKET=$$EXCHANGE_BUCKET"
  )
fi
docker run -d --name "$$CONTAINER" --network host --ipc host \
  --ulimit memlock=-1 --ulimit stack=67108864 \
  --device /dev/fuse --security-opt seccomp=unconfined \
  "$${partition_args[@]}" "$${gpu_args[@]}" \
  -v /scratch:/scratch -v /data:/data -v "$$containers_volume" -v "$$LOG_DIR:/var/log/slurm" \
  -e AWS_DEFAULT_REGION="$$REGION" \
  -e RELION_SPOT_CLUSTER="$$CLUSTER_NAME" \
  -e RELION_SPOT_JOB_TAGS=1 \
  -e RELION_SPOT_NODE_NAME="$$NODE_NAME" \
  -e RELION_SPOT_CONTROLLER="$$CONTROLLER" \
  -e RELION_SPOT_SLURM_KEY_PARAMETER_ARN="$$KEY_PARAMETER_ARN" \
  -e RELION_SPOT_METADATA_GUARD=verify \
  -e RELION_SPOT_SPOT_EVENTS_TABLE="$$SPOT_EVENTS_TABLE" \
  -e RELION_SPOT_INTAKE_TABLE="$$INTAKE_TABLE" \
  -e RELION_SPOT_SPOT_EVENTS_FILE="/data/.relion-spot/spot-events/$$CLUSTER_NAME.jsonl" \
  "$$SLURM_IMAGE" node >/dev/null || die "docker run $$SLURM_IMAGE failed"

for _ in $$(seq 1 60); do
  if [ "$$(docker inspect -f '{{.State.Running}}' "$$CONTAINER" 2>/dev/null)" != "true" ]; then
    docker logs --tail 20 "$$CONTAINER" >&2 || true
    die "the slurmd container stopped"
  fi
  docker exec "$$CONTAINER" pgrep -x slurmd >/dev/null 2>&1 && break
  sleep 1
done
docker exec "$$CONTAINER" pgrep -x slurmd >/dev/null 2>&1 || die "slurmd did not start"
log "slurmd runs as $$NODE_NAME against $$CONTROLLER"

# --- 7. The spot watcher, next to slurmd -------------------------------------------------------
docker exec -d "$$CONTAINER" /opt/relion-spot/venv/bin/python -I -m relion_spot.node.spot_watcher ||
  die "the spot watcher would not start"
log "spot watcher started; node $$NODE_NAME is up"

# --- 8. GPU metrics for the cluster dashboard (CloudWatch agent, Cluster dimension) -----------
readonly AGENT_HOME=/opt/aws/amazon-cloudwatch-agent
start_gpu_metrics() {
  if [ ! -x "$$AGENT_HOME/bin/amazon-cloudwatch-agent-ctl" ]; then
    dnf install -y -q amazon-cloudwatch-agent || return 1
  fi
  mkdir -p "$$AGENT_HOME/etc" || return 1
  cat >"$$AGENT_HOME/etc/relion-spot-gpu.json" <<'AGENT_CONFIG' || return 1
${cloudwatch_agent_config}
AGENT_CONFIG
  "$$AGENT_HOME/bin/amazon-cloudwatch-agent-ctl" -a fetch-config -m ec2 -s \
    -c "file:$$AGENT_HOME/etc/relion-spot-gpu.json" >/dev/null
}
if [ "$${#gpu_args[@]}" -eq 0 ]; then
  log "no GPU on $$NODE_NAME: no GPU metrics"
elif start_gpu_metrics; then
  log "GPU metrics of $$NODE_NAME go to CloudWatch"
else
  log "the CloudWatch agent did not start: $$NODE_NAME's GPUs are missing from the dashboard"
fi
