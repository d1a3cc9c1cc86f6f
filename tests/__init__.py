"""pyc10d's tests: the subpackages mirror pyc10d's (store/, transport/, process_group/...)."""
