"""Deployment artefacts: Dockerfile parsing and the offline checks (`python -m deploy.check`)."""
