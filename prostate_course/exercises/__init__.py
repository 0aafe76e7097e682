"""Exercise checks for the notebooks: one module per notebook, one function per exercise."""
