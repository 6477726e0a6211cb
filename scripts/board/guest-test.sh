#!/bin/bash
# Runs inside the emulated board (fer-board-test.service, after boot): installs the package the way
# a user does, then checks the service under real systemd. Every check prints one line
# "BOARD: ok NAME: detail" or "BOARD: FAIL NAME: detail" on the console; the host
# (scripts/board-test.sh) reads them and decodes the serial readings from the virtio console.
# Every wait is bounded.
set -uo pipefail
cd /fer-board || exit 1
failures=0
ok() { echo "BOARD: ok $1: $2"; }
fail() { echo "BOARD: FAIL $1: $2"; failures=$((failures + 1)); }
check() { # NAME DETAIL COMMAND...
  local name=$1 detail=$2
  shift 2
  if "$@"; then ok "$name" "$detail"; else fail "$name" "$detail"; fi
}
# wait_for SECONDS COMMAND...: true once COMMAND succeeds, false after SECONDS.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
}
prop() { systemctl show fer-sensor -P "$1"; }
active() { [ "$(prop ActiveState)" = active ]; }
journal_has() { journalctl -u fer-sensor --no-pager -o cat | grep -q -- "$1"; }
finish() {
  journalctl -u fer-sensor --no-pager -o short-monotonic | tail -40 | sed 's/^/journal: /'
  if [ $failures -eq 0 ]; then echo "BOARD-TEST PASS"; else echo "BOARD-TEST FAIL ($failures)"; fi
  systemctl poweroff --no-block
  exit 0
}

check camera "vivid's /dev/video0 is there" wait_for 60 test -c /dev/video0

# A user's install: apt on the package file. Dependencies come from the board; no network.
first=$(ls fer-sensor_*-1_arm64.deb)
second=$(ls fer-sensor_*-2_arm64.deb)
check install "apt install ./$first" apt-get install -y -q "./$first"
check user "the package made the fer-sensor user in video, gpio and dialout" \
  bash -c 'id -nG fer-sensor | tr " " "\n" | sort | tr "\n" " " | grep -q "dialout fer-sensor gpio video"'
check enabled "the unit is enabled" systemctl -q is-enabled fer-sensor
check device-unit "the udev rule makes the camera a systemd device" \
  wait_for 20 bash -c '[ "$(systemctl show dev-video0.device -P ActiveState)" = active ]'

# The user's edit, as the README has it: stop the service (it holds the camera), edit the
# configuration for this board's serial port and broker (a drop-in allows the port, as the unit's
# comments say), check, start.
systemctl stop fer-sensor
install -m 644 board.toml /etc/fer-sensor.toml
mkdir -p /etc/systemd/system/fer-sensor.service.d
install -m 644 board-dropin.conf /etc/systemd/system/fer-sensor.service.d/board.conf
check config "fer-sensor check --config /etc/fer-sensor.toml" \
  runuser -u fer-sensor -- bash -c 'cd /usr/share/fer-sensor && fer-sensor check --config /etc/fer-sensor.toml'
systemctl daemon-reload
mosquitto_sub -h 127.0.0.1 -t 'fer-sensor/#' -v -W 240 >mqtt.log 2>&1 &
subscriber=$!
systemctl start fer-sensor
check ready "active after READY=1 under the unit's sandbox" wait_for 120 active
check status "a status line with frames read" \
  wait_for 120 bash -c "systemctl show fer-sensor -P StatusText | grep -q 'frames'"
echo "status: $(prop StatusText)"
check frames "frames from /dev/video0 through V4L2 (YUYV)" journal_has "camera /dev/video0: .* YUYV"
check mqtt "an MQTT state from the broker on the board" \
  wait_for 60 grep -q '^fer-sensor/[^ ]*/state .*no_face' mqtt.log
grep -m 3 '^fer-sensor/' mqtt.log | sed 's/^/mqtt: /'

# The watchdog: a frozen sensor is killed, its pins idled, and it starts again.
pid=$(prop MainPID)
restarts=$(prop NRestarts)
kill -STOP "$pid"
check watchdog "a sensor frozen with SIGSTOP is killed and restarted" \
  wait_for 120 bash -c "[ \"\$(systemctl show fer-sensor -P NRestarts)\" -gt $restarts ] && [ \"\$(systemctl show fer-sensor -P ActiveState)\" = active ]"
check watchdog-log "systemd logged the watchdog timeout" \
  bash -c "journalctl -u fer-sensor --no-pager | grep -q 'Watchdog timeout'"
check idle-pins "ExecStopPost ran idle-pins after the kill" journal_has "no pins to idle"
check new-pid "the restarted sensor is a new process" bash -c "[ \"\$(systemctl show fer-sensor -P MainPID)\" != $pid ]"

# A clean, fast stop.
wait_for 120 active
seen=$(wc -l <mqtt.log)
start=$(date +%s%N)
systemctl stop fer-sensor
took=$((($(date +%s%N) - start) / 1000000))
check stop "systemctl stop took $took ms (TimeoutStopSec=5)" test "$took" -lt 5000
check stop-result "the stop ended with Result=success" test "$(prop Result)" = success
check stop-offline "the stop published offline" \
  wait_for 10 bash -c "tail -n +$((seen + 1)) mqtt.log | grep -q '/availability offline'"
systemctl start fer-sensor
wait_for 120 active

# An upgrade to a rebuilt package keeps the edited configuration and restarts the service.
edited=$(sha256sum </etc/fer-sensor.toml)
pid=$(prop MainPID)
check upgrade "apt install ./$second" apt-get install -y -q "./$second"
check upgrade-config "the edited /etc/fer-sensor.toml survived" test "$(sha256sum </etc/fer-sensor.toml)" = "$edited"
check upgrade-restart "the upgrade restarted the service" \
  wait_for 120 bash -c "systemctl -q is-active fer-sensor && [ \"\$(systemctl show fer-sensor -P MainPID)\" != $pid ]"

kill "$subscriber" 2>/dev/null
# Removal stops the service and keeps the configuration; purge removes it.
check remove "apt remove fer-sensor" apt-get remove -y -q fer-sensor
check remove-stopped "the service stopped" bash -c '! pgrep -x fer-sensor'
check remove-keeps "remove keeps /etc/fer-sensor.toml" test -f /etc/fer-sensor.toml
check purge "apt purge fer-sensor" apt-get purge -y -q fer-sensor
check purge-removes "purge removes /etc/fer-sensor.toml" test ! -e /etc/fer-sensor.toml
finish
