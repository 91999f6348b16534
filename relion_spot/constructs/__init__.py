"""One construct per capability; stacks only wire them together."""
