"""The embedded local cloud: moto standing in for AWS, node containers standing in for instances.

``cloud.prepare_cloud`` creates in moto what the controller's power-save programs need (a
subnet, a launch template per partition) and returns the controller's environment;
``reconciler.Reconciler`` plays the hypervisor, turning the cluster's running moto instances into
node containers and removing them when the instances go.
"""
