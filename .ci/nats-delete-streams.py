"""Deletes every JetStream stream whose name starts with PREFIX + "_".

Usage: nats-delete-streams.py HOST PORT PREFIX

Speaks the NATS text protocol directly: the CI machine has no NATS client
library or CLI. Used by .ci/schemathesis to remove the streams of the
Fulfil it started, as the test harness does for each test.
"""

import json
import socket
import sys

host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=10)
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.fulfil_ci 1\r\n')
def request(subject, payload=b"{}"):
    s.sendall(b"PUB %s _INBOX.fulfil_ci %d\r\n%s\r\nPING\r\n" % (subject.encode(), len(payload), payload))
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("NATS closed the connection")
        if line.startswith(b"MSG"):
            size = int(line.split()[-1])
            body = f.read(size + 2)[:-2]
            return json.loads(body)
        if line.startswith(b"-ERR"):
            raise SystemExit(line.decode().strip())
names, offset = [], 0
for _ in range(100):
    answer = request("$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode())
    page = answer.get("streams") or []
    names += page
    offset += len(page)
    if not page or offset >= answer.get("total", 0):
        break
for name in names:
    if name.startswith(prefix + "_"):
        answer = request("$JS.API.STREAM.DELETE." + name)
        print("deleted" if answer.get("success") else answer, name)
