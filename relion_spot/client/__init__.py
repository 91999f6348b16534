"""The lab's side of a deployed cluster: ``relion-spot submit/status/logs/cancel/plot``.

Everything goes through AWS APIs with the user's own credentials: the cluster is found from its
CloudFormation stack's outputs (``cluster.find_cluster``), submissions and cancels go on the
intake queue, and status, logs and plots come from the intake table (where the controller
records decisions and each job reports its progress) and the job cost table. No SSH, no file
system: nothing listens on the internet.
"""
