"""The foundations every layer uses: files written whole or not at all, and argument checks."""
