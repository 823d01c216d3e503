#!/usr/bin/env python3
"""Waiting helpers for the demo scripts (no curl needed in the VM).

  wait.py port PORT [TIMEOUT_S]         until 127.0.0.1:PORT accepts a connection
  wait.py quiet RECEIVER_PORT [QUIET_S] [TIMEOUT_S]
                                        until the receiver's span count stops changing
Exit status 1 on timeout.
"""

import json
import socket
import sys
import time
import urllib.request


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def spans(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
        return json.load(r)["spans"]


def main():
    what, port = sys.argv[1], int(sys.argv[2])
    if what == "port":
        deadline = time.monotonic() + float(sys.argv[3] if len(sys.argv) > 3 else 60)
        while not port_open(port):
            if time.monotonic() > deadline:
                sys.exit(1)
            time.sleep(0.1)
    elif what == "quiet":
        quiet = float(sys.argv[3] if len(sys.argv) > 3 else 2)
        deadline = time.monotonic() + float(sys.argv[4] if len(sys.argv) > 4 else 60)
        last, since = spans(port), time.monotonic()
        while time.monotonic() - since < quiet:
            if time.monotonic() > deadline:
                sys.exit(1)
            time.sleep(0.2)
            n = spans(port)
            if n != last:
                last, since = n, time.monotonic()
        print(last)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
