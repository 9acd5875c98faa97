"""ConsentLine's benchmark: see bench/README.md."""
