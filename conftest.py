"""Registers the plugin for this checkout (when installed, its pytest11 entry point does)."""

pytest_plugins = ["pytest_overlay.plugin"]
