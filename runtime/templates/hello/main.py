"""The smallest Crucible job: main() returns a JSON value, which becomes the envelope's `result`."""

import platform


def main():
    return {"message": "hello from Crucible", "python": platform.python_version()}
