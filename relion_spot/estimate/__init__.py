"""What a deployment bills while no job runs, read from its synthesized templates."""
