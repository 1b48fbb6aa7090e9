#!/bin/sh
# /init of the lab guest (copied into the initramfs by build-guest.sh; busybox sh).
#
# Kernel command line parameters (read from /proc/cmdline: dotted ones never reach the environment):
#   vpmd.cmd=BASE64     run this shell script (base64 of its text) in /vpmd, then exit
#   vpmd.script=PATH    run this script (a path in the guest, e.g. /lab/script.sh), then exit
#   vpmd.agent=1        run commands the host drops into /lab/cmd/N.sh until /lab/halt appears
# Output of a run goes to the console and to /lab/output.log, its status to /lab/status; the exit
# status leaves QEMU through isa-debug-exit (port 0xf4): QEMU exits with (status << 1) | 1.
# Shares: the repository (9p tag "vpmd") at /vpmd, the run's host folder (tag "lab") at /lab.
export PATH=/usr/bin:/usr/sbin HOME=/root DENO_DIR=/tmp/deno NO_COLOR=1 TERM=dumb

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=755 run /run
mount -t tmpfs -o mode=1777 tmp /tmp
mkdir -p /dev/hugepages /dev/pts /run/dpdk
mount -t hugetlbfs hugetlbfs /dev/hugepages
mount -t devpts devpts /dev/pts
ip link set lo up 2>/dev/null
for m in $(cat /etc/lab-modules); do modprobe "$m" || echo "lab-init: modprobe $m failed"; done

share() { # tag dir
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,access=any "$1" "$2" 2>/dev/null
}
share vpmd /vpmd || echo "lab-init: no 9p share 'vpmd' (the repository)"
share lab /lab || echo "lab-init: no 9p share 'lab' (the run folder)"

# Exit QEMU with status $1 through isa-debug-exit; power off if that device is missing.
leave() {
  rc=$1
  [ "$rc" -gt 127 ] && rc=127
  sync
  printf "\\$(printf %o "$rc")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
  poweroff -f
}

param() { # name -> value of name=... on the kernel command line
  for w in $(cat /proc/cmdline); do
    case $w in "$1="*) echo "${w#*=}" ;; esac
  done
}

# Run one script file with the repository as working directory; output to $2, status to $3.
run() {
  (
    cd /vpmd 2>/dev/null || cd /
    sh "$1"
  ) >"$2" 2>&1
  echo $? >"$3.tmp"
  mv "$3.tmp" "$3"
}

echo "lab-init: ready after $(cut -d' ' -f1 /proc/uptime) s"
script=$(param vpmd.script)
cmd=$(param vpmd.cmd)
if [ -n "$cmd" ]; then
  echo "$cmd" | base64 -d >/run/cmd.sh
  script=/run/cmd.sh
fi

if [ -n "$script" ]; then
  out=/run/output.log
  [ -w /lab ] && out=/lab/output.log
  (
    cd /vpmd 2>/dev/null || cd /
    sh "$script"
    echo $? >/run/status
  ) 2>&1 | tee "$out"
  rc=$(cat /run/status)
  [ -w /lab ] && cp /run/status /lab/status
  echo "lab-init: exit status $rc"
  leave "$rc"
fi

if [ "$(param vpmd.agent)" = 1 ]; then
  mkdir -p /lab/cmd
  echo "lab-init: agent waiting for /lab/cmd/N.sh" >/lab/agent.ready
  n=0
  idle=0
  while :; do
    if [ -f "/lab/cmd/$n.sh" ]; then
      run "/lab/cmd/$n.sh" "/lab/cmd/$n.out" "/lab/cmd/$n.rc" &
      n=$((n + 1))
      idle=0
    elif [ -f /lab/halt ]; then
      leave "$(cat /lab/halt)"
    elif [ $idle -lt 40 ]; then
      # Quick polls right after a command (tests issue them in bursts), slower ones later so
      # the agent costs a benchmark running in the guest next to nothing.
      idle=$((idle + 1))
      sleep 0.05
    else
      sleep 0.25
    fi
  done
fi

echo "lab-init: nothing to run (vpmd.cmd, vpmd.script or vpmd.agent=1); starting a shell"
setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1'
leave 0
