"""Exercise checks for the notebooks: one module per notebook (nbXX.py), one function per exercise."""
