"""Stacks only wire constructs together, grant, and output; capabilities live in constructs/."""
