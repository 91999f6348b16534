"""Results out: ``relion-spot pull`` through the cluster's results exchange bucket.

A job holds no credentials, so an export job on the CPU partition writes a job's results
(relion_spot.relion.results) under ``out/<its submission id>/`` with the session the node's root
broker hands it (relion_spot.node.stage_credentials), a manifest last; the lab's CLI then
downloads what the manifest lists and checks every file's sha256. The bucket keeps these copies
a week.
"""
