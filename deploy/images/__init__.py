"""Offline image builds (make images-offline): base images from Debian's packages, a chrooted start of an image."""
