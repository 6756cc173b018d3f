"""initbuild: a dracut-like generator of initoverlayfs boot images."""

__version__ = "0.1.0"
