"""Bottom layer: plain data and rules every other layer shares; imports nothing of metasched."""
