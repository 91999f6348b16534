"""The monthly budget cap: no launch that would take a cluster's month past its cap.

``forecast`` models what the month will have cost, ``ledger`` reads what it has cost, ``jobs``
asks Slurm what runs and waits, ``guard`` decides (the resume program before each launch, and the
release loop on the controller once a minute), ``cli`` shows a lab what is spent and left.
"""
