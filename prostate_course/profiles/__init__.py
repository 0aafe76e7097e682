"""Profile YAML files shipped as package data (see :mod:`prostate_course.profile`)."""
