"""Tools over finished runs: comparing runs, pictures of attention."""
