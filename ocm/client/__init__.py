"""The ocm terminal client: C{python -m ocm.client}."""
