#!/bin/sh
# nimbus vendor-data (runs once per instance, in cloud-init's final stage): installs a unit
# that tells the metadata service when cloud-init has finished, on this boot and every later
# one (cloud-init's phone_home runs once per instance and cannot send the IMDSv2 token).
set -eu
cat > /usr/local/sbin/nimbus-report-ready <<'PY'
#!/usr/bin/python3
"""Reports to nimbus's metadata service that cloud-init has finished (IMDSv2: token first)."""
import subprocess
import time
import urllib.request

BASE = "http://169.254.169.254"


def report():
    put = urllib.request.Request(
        BASE + "/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    token = urllib.request.urlopen(put, timeout=5).read().decode()
    status = subprocess.run(
        ["cloud-init", "status"], capture_output=True, text=True, check=False
    ).stdout.strip()[:500]
    post = urllib.request.Request(
        BASE + "/nimbus/v1/ready",
        data=status.encode(),
        method="POST",
        headers={"X-aws-ec2-metadata-token": token, "Content-Type": "text/plain"},
    )
    urllib.request.urlopen(post, timeout=5).read()


for attempt in range(30):
    try:
        report()
        break
    except Exception as e:  # the network may not be up yet: retry, bounded
        print("nimbus-report-ready: %s; retrying" % e, flush=True)
        time.sleep(2)
else:
    raise SystemExit("nimbus-report-ready: the metadata service did not take the report")
PY
chmod 755 /usr/local/sbin/nimbus-report-ready
cat > /etc/systemd/system/nimbus-ready.service <<'UNIT'
[Unit]
Description=Report to nimbus that cloud-init has finished
After=cloud-final.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/nimbus-report-ready
# Its retries (30, 2 s apart, 5 s per request) may outlast the default 90 s start timeout
# on a slow guest; its messages go to the console too, where the platform can see why.
TimeoutStartSec=10min
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=cloud-init.target
UNIT
systemctl daemon-reload
systemctl enable nimbus-ready.service
# Queued behind cloud-final.service, which runs this script: it starts once cloud-init ends.
systemctl start --no-block nimbus-ready.service
