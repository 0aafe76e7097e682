"""Exercise checks of the notebooks: one module per notebook (nbXX), one function per exercise."""
