"""Tests that drive a real JupyterLab in Debian's headless Chromium."""
