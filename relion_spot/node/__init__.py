"""What runs on a node instance besides slurmd: the spot-reclaim watcher and its IMDS client.

The node bootstrap (assets/slurm/node-bootstrap.sh) starts the watcher inside the slurmd
container, where scontrol reaches the controller through slurmd's configless cache and sack
socket, and IMDS is reachable over the host network (hop limit 2).
"""
