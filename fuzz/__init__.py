"""Coverage-guided fuzz targets for every reader of untrusted bytes (``python -m fuzz TARGET``).

See fuzz/README.md: the targets, the seed corpus, the CI run and the long campaign.
"""
