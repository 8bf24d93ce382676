#!/usr/bin/env bash
# Haven replication benchmark: the agent's NBD export against qemu-nbd, end-to-end replication
# throughput, RPO under steady load, and process-server-to-master-target bytes per byte written.
#
# Usage: bench/replication.sh            (from the workspace root or anywhere)
#
# Environment (all optional):
#   HAVEN_BIN   haven binary (default: target/release/haven, built with cargo if missing)
#   SKIP_BUILD  1: do not run `cargo build --release --bin haven`
#   REPEAT      runs of every measurement (default 2)
#   RUNTIME     seconds of the time-based fio jobs A and B (default 20)
#   RPO_SECS    seconds of the RPO load (default 30)
#   RPO_RATE    fio --rate of the RPO load (default 50m)
#   RPO_BS      block size of the RPO load (default 4k)
#   E2E_SIZE    bytes written by the end-to-end jobs (default 1g)
#   KEEPUP_RATE fio --rate of the sequential keep-up job, 10^6-based (default 300m = 300 MB/s)
#   KEEPUP_SECS seconds of the keep-up job (default 30)
#   BENCH_TMP   directory for the temporary files (default: $TMPDIR or /tmp); it must be on the
#               filesystem under test: qemu-nbd's file and each lab's disk live there
#   KEEP        1: keep the temporary directory
#   STEPS       which measurements to run (default "qemu nbdkit haven multi e2e keepup rpo")
#
# Jobs A (4k random writes), B (1M sequential writes) and C (A with a flush every 32 writes,
# fio --fsync=32) run against qemu-nbd, nbdkit's file plugin and a Haven lab; "multi" writes 4
# disks at once (job A on each) through one Haven agent and through 4 qemu-nbd exports.
#
# Needs: fio (with the nbd engine), qemu-nbd, python3. Prints every command it runs (lines
# starting with "+ cmd:") and, at the end, a markdown table of the results.

set -euo pipefail
shopt -s inherit_errexit

REPEAT=${REPEAT:-2}
RUNTIME=${RUNTIME:-20}
RPO_SECS=${RPO_SECS:-30}
RPO_RATE=${RPO_RATE:-50m}
RPO_BS=${RPO_BS:-4k}
E2E_SIZE=${E2E_SIZE:-1g}
KEEPUP_RATE=${KEEPUP_RATE:-300m}
KEEPUP_SECS=${KEEPUP_SECS:-30}
STEPS=" ${STEPS:-qemu nbdkit haven multi e2e keepup rpo} "
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HAVEN=${HAVEN_BIN:-$ROOT/target/release/haven}

for tool in fio qemu-nbd python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y fio qemu-utils python3)" >&2; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "this fio has no nbd engine" >&2; exit 1; }

if [[ ${SKIP_BUILD:-0} != 1 && -z ${HAVEN_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --release --bin haven)
fi
[[ -x $HAVEN ]] || { echo "no haven binary at $HAVEN" >&2; exit 1; }

WORK=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/haven-bench.XXXXXX")
RESULTS=$WORK/results.tsv   # name <TAB> run <TAB> key <TAB> value
COMMANDS=$WORK/commands.txt
: >"$RESULTS"
: >"$COMMANDS"
PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -INT "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP:-0} == 1 || $rc != 0 || -s $WORK/failures.txt ]]; then
        echo "temporary files kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "[$(date +%T)] $*" >&2; }
# Records a command; run: records and runs it.
note() {
    echo "+ cmd: $*" >&2
    echo "$*" >>"$COMMANDS"
}
run() {
    note "$@"
    "$@"
}
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }
stop_pid() {
    local pid=$1 sig=${2:-INT}
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

PY=$WORK/bench.py
cat >"$PY" <<'PYEOF'
import json, os, socket, sys, time, urllib.request

def get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())

def status(api):
    return get(api.rstrip("/") + "/api/status")

def disk0(s):
    for d in s.get("disks", []):
        if d.get("disk") == "disk0":
            return d
    return None

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); print(p)

def wait_port(port, deadline_s):
    end = time.time() + float(deadline_s)
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", int(port)), timeout=0.5).close(); return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"port {port} not listening after {deadline_s} s")

def wait_lab(envfile, deadline_s):
    """Waits for lab.env and for disk0 in data mode with a replica; prints the env lines."""
    end = time.time() + float(deadline_s)
    last = None
    while time.time() < end:
        if os.path.exists(envfile):
            env = dict(l.split("=", 1) for l in open(envfile).read().split() if "=" in l)
            try:
                s = status(env["HAVEN_API"]); d = disk0(s); last = d
                if d and d.get("source") and d["source"]["mode"].lower() == "data" and d.get("replica") \
                        and d.get("master_target_api") and s.get("process_servers"):
                    for k, v in env.items(): print(f"{k}={v}")
                    print(f"HAVEN_MT_API={mt_url(d['master_target_api'])}")
                    return
            except Exception as e:
                last = repr(e)
        time.sleep(0.2)
    sys.exit(f"lab not ready after {deadline_s} s: {last}")

def mt_url(a):
    return a if a.startswith("http") else "http://" + a

def mt_applied(mt):
    for r in get(mt.rstrip("/") + "/replicas"):
        if r["disk"] == "disk0":
            return r["applied_seq"]
    return None

def poll(api, mt, out, interval, stopfile):
    """Samples the status (and the master target's live applied seq) until stopfile exists."""
    interval = float(interval)
    with open(out, "w") as f:
        nxt = time.time()
        while not os.path.exists(stopfile):
            t = time.time()
            rec = {"t": t}
            try:
                s = status(api); d = disk0(s)
                rec["src"] = d["source"]; rec["rep"] = d["replica"]
                rec["ps"] = s["process_servers"]
                if mt != "-":
                    rec["mt_applied"] = mt_applied(mt)
            except Exception as e:
                rec["err"] = repr(e)
            rec["t_end"] = time.time()
            f.write(json.dumps(rec) + "\n"); f.flush()
            nxt += interval
            time.sleep(max(0.0, nxt - time.time()))

def fio_total(path):
    """All jobs of one fio run together: total IOPS and MB/s."""
    j = json.load(open(path))
    iops = sum(x["write"]["iops"] for x in j["jobs"])
    bw = sum(x["write"]["bw_bytes"] for x in j["jobs"])
    print(f"{iops:.0f} {bw/1e6:.1f}")

def fio_summary(path):
    j = json.load(open(path))
    w = j["jobs"][0]["write"]
    lat = w.get("clat_ns", {}).get("percentile", {})
    print(f"{w['iops']:.0f} {w['bw_bytes']/1e6:.1f} {w['io_bytes']} {j['jobs'][0]['elapsed']} "
          f"{float(lat.get('99.000000', 0))/1e6:.2f}")

def catchup(api, mt, written_bytes, deadline_s):
    """After the writes: waits until the status shows every byte written and seq_applied ==
    seq_written (stable over one heartbeat). Prints final seq_written."""
    end = time.time() + float(deadline_s)
    last = None
    while time.time() < end:
        s = disk0(status(api))["source"]
        if s["bytes_written"] >= int(written_bytes) and s["seq_applied"] >= s["seq_written"]:
            if last == s["seq_written"]:
                print(s["seq_written"]); return
            last = s["seq_written"]
            time.sleep(1.1)
            continue
        time.sleep(0.1)
    s = disk0(status(api))
    sys.exit(f"replication did not catch up within {deadline_s} s: source={s['source']} replica={s['replica']}")

def e2e(samples, t0, t1, final_seq, nbytes):
    """Times from write start t0 to (a) the status showing seq_applied >= final_seq, (b) the
    master target's API showing applied_seq >= final_seq. Prints t_fio t_status t_mt in s."""
    final_seq = int(final_seq); t0 = float(t0); t1 = float(t1)
    ts = tm = None
    for l in open(samples):
        r = json.loads(l)
        if "err" in r: continue
        if ts is None and r["src"]["seq_applied"] >= final_seq: ts = r["t"]
        if tm is None and r.get("mt_applied") is not None and r["mt_applied"] >= final_seq: tm = r["t_end"]
    print(f"{t1-t0:.3f} {(ts or float('nan'))-t0:.3f} {(tm or float('nan'))-t0:.3f}")

def ps_ratio(api):
    s = status(api)
    ps = s["process_servers"]; src = disk0(s)["source"]; rep = disk0(s)["replica"]
    bi = sum(p["bytes_in"] for p in ps.values()); bo = sum(p["bytes_out"] for p in ps.values())
    print(f"{bi} {bo} {bo/bi if bi else float('nan'):.4f} {src['bytes_written']} {rep['journal_bytes']}")

def rpo(samples, t0, t1):
    t0 = float(t0); t1 = float(t1)
    v = []; lag = []
    for l in open(samples):
        r = json.loads(l)
        if "err" in r or not (t0 <= r["t"] <= t1): continue
        v.append(r["src"]["rpo_ms"])
        lag.append(r["src"]["seq_written"] - r["src"]["seq_applied"])
    if not v: sys.exit("no RPO samples")
    v.sort()
    def pct(p):
        import math
        return v[min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))]
    print(f"{pct(50)} {pct(99)} {v[-1]} {len(v)} {max(lag)}")

def keepup(samples, t0, t1, write_bytes):
    """Keep-up job: the master target's applied rate while fio ran (slope of applied_seq, one
    seq per 1 MiB write, from 2 s after the start to the end) and the largest agent buffer seen.
    Prints applied_MB/s max_buffered_MiB."""
    t0 = float(t0) + 2.0; t1 = float(t1)
    pts = []; buf = 0
    for l in open(samples):
        r = json.loads(l)
        if "err" in r: continue
        buf = max(buf, r["src"]["buffered_bytes"])
        if r.get("mt_applied") is not None and t0 <= r["t_end"] <= t1:
            pts.append((r["t_end"], r["mt_applied"]))
    if len(pts) < 2: sys.exit("too few samples")
    (ta, a), (tb, b) = pts[0], pts[-1]
    print(f"{(b - a) * int(write_bytes) / (tb - ta) / 1e6:.1f} {buf / 2**20:.0f}")

def table(results, repeat):
    rows = {}
    for l in open(results):
        name, run, key, val = l.rstrip("\n").split("\t")
        rows.setdefault(name, {}).setdefault(key, {})[int(run)] = val
    def vals(name, key):
        d = rows.get(name, {}).get(key, {})
        return [d.get(i) for i in range(1, int(repeat) + 1)]
    def fmt(name, key):
        return " / ".join(x if x is not None else "n/a" for x in vals(name, key))
    def ratio(a, b, key):
        out = []
        for x, y in zip(vals(a, key), vals(b, key)):
            try:
                out.append(f"{float(x)/float(y):.2f}x")
            except (TypeError, ValueError, ZeroDivisionError):
                out.append("n/a")
        return " / ".join(out)
    print(f"| Measurement | Result (run 1 / run 2 ...) |")
    print(f"|---|---|")
    for job, what, key in (("A", "4k randwrite QD32", "iops"), ("C", "4k randwrite QD32 + fsync every 32", "iops"),
                           ("B", "1M seq write QD8", "mbs")):
        unit = "IOPS" if key == "iops" else "MB/s"
        print(f"| {job} {what}, qemu-nbd: {unit} | {fmt('qemu-nbd-'+job, key)} |")
        print(f"| {job} {what}, nbdkit file: {unit} | {fmt('nbdkit-'+job, key)} |")
        print(f"| {job} {what}, Haven agent (replicating): {unit} | {fmt('haven-'+job, key)} |")
        print(f"| {job} ratio Haven/qemu-nbd | {ratio('haven-'+job, 'qemu-nbd-'+job, key)} |")
        print(f"| {job} ratio Haven/nbdkit file | {ratio('haven-'+job, 'nbdkit-'+job, key)} |")
        print(f"| {job} clat p99 ms, qemu-nbd / nbdkit / Haven | {fmt('qemu-nbd-'+job,'p99ms')} // {fmt('nbdkit-'+job,'p99ms')} // {fmt('haven-'+job,'p99ms')} |")
    print(f"| 4 disks at once, job A on each, 4 qemu-nbd exports: total IOPS | {fmt('multi-qemu','iops')} |")
    print(f"| 4 disks at once, job A on each, one Haven agent: total IOPS | {fmt('multi-haven','iops')} |")
    print(f"| 4 disks ratio Haven/qemu-nbd | {ratio('multi-haven','multi-qemu','iops')} |")
    print(f"| A Haven: replication lag right after fio (seqs) / catch-up s | {fmt('haven-A','lag_end')} // {fmt('haven-A','catchup_s')} |")
    print(f"| B Haven: replication lag right after fio (seqs) / catch-up s | {fmt('haven-B','lag_end')} // {fmt('haven-B','catchup_s')} |")
    for kind in ("random", "compressible", "compressible-always"):
        n = f"e2e-{kind}"
        print(f"| E2E {kind}: fio write alone MB/s | {fmt(n,'fio_mbs')} |")
        print(f"| E2E {kind}: MB/s to applied (master target API, live) | {fmt(n,'mt_mbs')} |")
        print(f"| E2E {kind}: MB/s to seq_applied==seq_written in /api/status (heartbeat) | {fmt(n,'status_mbs')} |")
        print(f"| E2E {kind}: seconds write / to applied (MT) / to applied (status) | {fmt(n,'times')} |")
        print(f"| PS bytes_out/bytes_in after E2E {kind} | {fmt(n,'ps_ratio')} |")
    for kind in ("random", "fio"):
        n = f"keepup-{kind}"
        print(f"| Keep-up ({kind} data): 1M seq writes at fio --rate, MB/s asked / achieved | {fmt(n,'asked')} / {fmt(n,'fio_mbs')} |")
        print(f"| Keep-up ({kind} data): master target applied MB/s while fio ran | {fmt(n,'applied_mbs')} |")
        print(f"| Keep-up ({kind} data): largest agent buffer (MiB) / catch-up after fio (s) | {fmt(n,'max_buf')} // {fmt(n,'catchup_s')} |")
        print(f"| Keep-up ({kind} data): PS bytes out / bytes in | {fmt(n,'ps_ratio')} |")
    print(f"| RPO load: achieved fio MB/s | {fmt('rpo','mbs')} |")
    print(f"| RPO rpo_ms p50 | {fmt('rpo','p50')} |")
    print(f"| RPO rpo_ms p99 | {fmt('rpo','p99')} |")
    print(f"| RPO rpo_ms max | {fmt('rpo','max')} |")
    print(f"| RPO samples / max seq lag | {fmt('rpo','samples_lag')} |")

cmd = sys.argv[1]
args = sys.argv[2:]
{"free_port": free_port, "wait_port": wait_port, "wait_lab": wait_lab, "poll": poll,
 "fio_summary": fio_summary, "fio_total": fio_total, "catchup": catchup, "e2e": e2e, "ps_ratio": ps_ratio,
 "keepup": keepup,
 "rpo": rpo, "table": table}[cmd](*args)
PYEOF
py() { python3 "$PY" "$@"; }

FIO_A=(--ioengine=nbd --rw=randwrite --bs=4k --iodepth=32 --size=1g --runtime="$RUNTIME" --time_based --numjobs=1 --name=a)
FIO_C=("${FIO_A[@]}" --fsync=32)
FIO_B=(--ioengine=nbd --rw=write --bs=1M --iodepth=8 --size=1g --runtime="$RUNTIME" --time_based --numjobs=1 --name=b)

# fio_run OUT.json URI ARGS...: runs fio, prints "iops MB/s io_bytes elapsed_s clat_p99_ms".
fio_run() {
    local out=$1 uri=$2; shift 2
    run fio --output-format=json --output="$out" "$@" --uri="$uri" >/dev/null
    py fio_summary "$out"
}

# start_qemu_nbd DIR: fresh sparse 1 GiB raw file; sets QEMU_PID, QEMU_URI.
start_qemu_nbd() {
    local dir=$1 port
    mkdir -p "$dir"
    run truncate -s 1G "$dir/disk0.img"
    port=$(py free_port)
    note qemu-nbd -f raw -t -x disk0 -p "$port" -b 127.0.0.1 --cache=writeback "$dir/disk0.img"
    qemu-nbd -f raw -t -x disk0 -p "$port" -b 127.0.0.1 --cache=writeback "$dir/disk0.img" \
        >"$dir/qemu-nbd.log" 2>&1 &
    QEMU_PID=$!
    PIDS+=("$QEMU_PID")
    py wait_port "$port" 20
    QEMU_URI=nbd://127.0.0.1:$port/disk0
}

# start_lab DIR [LAB ARGS...]: fresh lab; sets LAB_PID, HAVEN_API, HAVEN_NBD_URI, HAVEN_MT_API.
start_lab() {
    local dir=$1; shift
    note "$HAVEN" lab --dir "$dir" --disk-size 1G --status-interval 3600 "$@"
    "$HAVEN" lab --dir "$dir" --disk-size 1G --status-interval 3600 "$@" >"$dir.log" 2>&1 &
    LAB_PID=$!
    PIDS+=("$LAB_PID")
    local env
    if ! env=$(py wait_lab "$dir/lab.env" 60); then
        cat "$dir.log" >&2; exit 1
    fi
    HAVEN_API=$(sed -n 's/^HAVEN_API=//p' <<<"$env")
    HAVEN_NBD_URI=$(sed -n 's/^HAVEN_NBD_URI=//p' <<<"$env")
    HAVEN_MT_API=$(sed -n 's/^HAVEN_MT_API=//p' <<<"$env")
    log "lab up: $HAVEN_NBD_URI $HAVEN_API (master target $HAVEN_MT_API)"
}
stop_lab() {
    if ! kill -0 "$LAB_PID" 2>/dev/null; then
        lab_state
        log "the lab process had already exited ($LAB_STATE):"; tail -5 "$1.log" >&2
    fi
    stop_pid "$LAB_PID" INT
    [[ ${KEEP:-0} == 1 ]] || rm -rf "$1"
}
# lab_state: sets LAB_STATE to "alive" or how the lab process ended (128+N is signal N). Not in
# a subshell: only this shell can wait for the lab.
lab_state() {
    if kill -0 "$LAB_PID" 2>/dev/null; then LAB_STATE=alive; return; fi
    local rc=0
    wait "$LAB_PID" 2>/dev/null || rc=$?
    if ((rc > 128)); then
        LAB_STATE="lab process died: status $rc = signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null)), see its log"
    else
        LAB_STATE="lab process exited with status $rc"
    fi
}
# failed NAME RUN KEY WHAT: records a failed step (with the lab's state) and says so.
failed() {
    lab_state
    local why="FAILED: $4; $LAB_STATE"
    log "$1 run $2: $why"
    record "$1" "$2" "$3" "$why"
    echo "$1 run $2: $why" >>"$WORK/failures.txt"
}

# lab_lag: seq_written - seq_applied now (from the heartbeat-fed status).
lab_lag() {
    python3 - "$HAVEN_API" <<'EOF2'
import json, sys, urllib.request
s = json.loads(urllib.request.urlopen(sys.argv[1] + "/api/status", timeout=2).read())
d = [d for d in s["disks"] if d["disk"] == "disk0"][0]["source"]
print(d["seq_written"] - d["seq_applied"])
EOF2
}

# fio_args JOB: sets ARGS to job A, B or C.
fio_args() {
    case $1 in
        A) ARGS=("${FIO_A[@]}") ;;
        B) ARGS=("${FIO_B[@]}") ;;
        C) ARGS=("${FIO_C[@]}") ;;
    esac
}

# start_nbdkit DIR: nbdkit's file plugin on a fresh sparse 1 GiB file; sets NBDKIT_PID, NBDKIT_URI.
start_nbdkit() {
    local dir=$1 port
    mkdir -p "$dir"
    run truncate -s 1G "$dir/disk0.img"
    port=$(py free_port)
    note nbdkit -f -i 127.0.0.1 -p "$port" -e disk0 file file="$dir/disk0.img"
    nbdkit -f -i 127.0.0.1 -p "$port" -e disk0 file file="$dir/disk0.img" >"$dir/nbdkit.log" 2>&1 &
    NBDKIT_PID=$!
    PIDS+=("$NBDKIT_PID")
    py wait_port "$port" 20
    NBDKIT_URI=nbd://127.0.0.1:$port/disk0
}

# --- 1. Baselines: qemu-nbd and nbdkit's file plugin -----------------------------------------
step_nbdkit() {
    local job=$1 r=$2 d=$WORK/nbdkit-$1-$2 out iops mbs p99
    command -v nbdkit >/dev/null || { log "nbdkit is not installed (apt-get install nbdkit): skipped"; return 0; }
    start_nbdkit "$d"
    fio_args "$job"
    out=$(fio_run "$d/fio.json" "$NBDKIT_URI" "${ARGS[@]}")
    read -r iops mbs _ _ p99 <<<"$out"
    log "nbdkit job $job run $r: $iops IOPS, $mbs MB/s, clat p99 $p99 ms"
    record "nbdkit-$job" "$r" iops "$iops"; record "nbdkit-$job" "$r" mbs "$mbs"
    record "nbdkit-$job" "$r" p99ms "$p99"
    stop_pid "$NBDKIT_PID" TERM
    rm -f "$d/disk0.img"
}

step_qemu() {
    local job=$1 r=$2 d=$WORK/qemu-$1-$2 args out iops mbs p99
    start_qemu_nbd "$d"
    fio_args "$job"; args=("${ARGS[@]}")
    out=$(fio_run "$d/fio.json" "$QEMU_URI" "${args[@]}")
    read -r iops mbs _ _ p99 <<<"$out"
    log "qemu-nbd job $job run $r: $iops IOPS, $mbs MB/s, clat p99 $p99 ms"
    record "qemu-nbd-$job" "$r" iops "$iops"; record "qemu-nbd-$job" "$r" mbs "$mbs"
    record "qemu-nbd-$job" "$r" p99ms "$p99"
    stop_pid "$QEMU_PID" TERM
    rm -f "$d/disk0.img"
}

# --- 2. The same jobs against a fresh Haven lab (replication running) --------------------------
step_haven() {
    local job=$1 r=$2 d=$WORK/lab-$1-$2 args out iops mbs io_bytes p99 lag t fin catchup
    start_lab "$d"
    fio_args "$job"; args=("${ARGS[@]}")
    if ! out=$(fio_run "$d-fio.json" "$HAVEN_NBD_URI" "${args[@]}"); then
        failed "haven-$job" "$r" iops "fio job $job failed"; stop_lab "$d"; return 0
    fi
    read -r iops mbs io_bytes _ p99 <<<"$out"
    record "haven-$job" "$r" iops "$iops"; record "haven-$job" "$r" mbs "$mbs"
    record "haven-$job" "$r" p99ms "$p99"
    sleep 1.2   # one heartbeat, so that the status reflects the end of the writes
    lag=$(lab_lag) || lag=n/a
    t=$(date +%s.%N)
    if fin=$(py catchup "$HAVEN_API" - "$io_bytes" 300); then
        catchup=$(python3 -c "import time; print(f'{time.time()-$t-1.1:.1f}')")
        record "haven-$job" "$r" catchup_s "$catchup"
    else
        failed "haven-$job" "$r" catchup_s "no catch-up after job $job ($fin)"
    fi
    log "haven job $job run $r: $iops IOPS, $mbs MB/s, clat p99 $p99 ms; lag after fio $lag seqs, caught up in ~${catchup:-n/a} s"
    record "haven-$job" "$r" lag_end "$lag"
    stop_lab "$d"
}

# --- 2b. Four disks written at once: one Haven agent against four qemu-nbd exports ------------
# multi_fio OUT URI...: job A on every URI at once (one fio, one job per disk); prints IOPS MB/s.
multi_fio() {
    local out=$1; shift
    local jobs=() i=0
    for u in "$@"; do
        jobs+=(--name="d$i" --ioengine=nbd --uri="$u" --rw=randwrite --bs=4k --iodepth=32 --size=1g
            --runtime="$RUNTIME" --time_based)
        i=$((i + 1))
    done
    run fio --output-format=json --output="$out" "${jobs[@]}" >/dev/null
    py fio_total "$out"
}

step_multi() {
    local r=$1 d=$WORK/multi-$1 uris=() pids=() out iops mbs i
    for i in 0 1 2 3; do
        start_qemu_nbd "$d/q$i"; uris+=("$QEMU_URI"); pids+=("$QEMU_PID")
    done
    out=$(multi_fio "$d/qemu.json" "${uris[@]}")
    read -r iops mbs <<<"$out"
    log "4 disks, 4 qemu-nbd run $r: $iops IOPS in all"
    record multi-qemu "$r" iops "$iops"
    for p in "${pids[@]}"; do stop_pid "$p" TERM; done
    rm -rf "$d"/q*
    start_lab "$d/lab" --disks 4
    uris=()
    for i in 0 1 2 3; do uris+=("$(sed -n "s/^HAVEN_NBD_URI_DISK$i=//p" "$d/lab/lab.env")"); done
    if out=$(multi_fio "$d/haven.json" "${uris[@]}"); then
        read -r iops mbs <<<"$out"
        log "4 disks, one Haven agent run $r: $iops IOPS in all"
        record multi-haven "$r" iops "$iops"
    else
        failed multi-haven "$r" iops "fio on 4 disks failed"
    fi
    stop_lab "$d/lab"
}

# --- 3. End-to-end replication throughput (+ 5. PS bytes out/in) -------------------------------
step_e2e() {
    local kind=$1 r=$2 d=$WORK/lab-e2e-$1-$2 data stopf poll_pid t0 t1 out fmbs io_bytes final
    local tw ts tm mt_mbs st_mbs bi bo ratio bw jb lab_args=()
    # compressible-always: the same data with the process server compressing every batch
    # (--compression always) instead of only while the link is the bottleneck (adaptive).
    [[ $kind != compressible-always ]] || lab_args=(--compression always)
    start_lab "$d" "${lab_args[@]}"
    if [[ $kind == random ]]; then
        data=(--refill_buffers)   # fresh random data in every block: incompressible
    else
        data=(--refill_buffers --buffer_compress_percentage=67 --buffer_compress_chunk=4k)
    fi
    stopf=$d.stop
    python3 "$PY" poll "$HAVEN_API" "$HAVEN_MT_API" "$d.samples" 0.1 "$stopf" &
    poll_pid=$!; PIDS+=("$poll_pid")
    sleep 0.3
    t0=$(date +%s.%N)
    if ! out=$(fio_run "$d-fio.json" "$HAVEN_NBD_URI" \
        --ioengine=nbd --rw=write --bs=1M --iodepth=8 --size="$E2E_SIZE" --numjobs=1 --name=e2e "${data[@]}"); then
        touch "$stopf"; wait "$poll_pid" || true
        failed "e2e-$kind" "$r" mt_mbs "fio write of $E2E_SIZE failed"; stop_lab "$d"; return 0
    fi
    read -r _ fmbs io_bytes _ _ <<<"$out"
    t1=$(date +%s.%N)
    record "e2e-$kind" "$r" fio_mbs "$fmbs"
    if ! final=$(py catchup "$HAVEN_API" - "$io_bytes" 600); then
        touch "$stopf"; wait "$poll_pid" || true
        failed "e2e-$kind" "$r" mt_mbs "no catch-up ($final)"; stop_lab "$d"; return 0
    fi
    sleep 0.3
    touch "$stopf"; wait "$poll_pid" || true
    out=$(py e2e "$d.samples" "$t0" "$t1" "$final" "$io_bytes")
    read -r tw ts tm <<<"$out"
    mt_mbs=$(python3 -c "print(f'{$io_bytes/$tm/1e6:.1f}')")
    st_mbs=$(python3 -c "print(f'{$io_bytes/$ts/1e6:.1f}')")
    out=$(py ps_ratio "$HAVEN_API")
    read -r bi bo ratio bw jb <<<"$out"
    log "e2e $kind run $r: $io_bytes bytes; fio $fmbs MB/s (${tw}s); applied per MT API after ${tm}s ($mt_mbs MB/s), per status after ${ts}s ($st_mbs MB/s); PS in $bi out $bo ratio $ratio; agent bytes_written $bw; journal $jb"
    record "e2e-$kind" "$r" mt_mbs "$mt_mbs"
    record "e2e-$kind" "$r" status_mbs "$st_mbs"
    record "e2e-$kind" "$r" times "${tw}/${tm}/${ts}"
    record "e2e-$kind" "$r" ps_ratio "$ratio ($bo/$bi)"
    stop_lab "$d"
}

# --- 3b. Keep-up: sequential writes at a fixed rate (default 300 MB/s) ---------------------------
step_keepup() {
    local kind=$1 r=$2 d=$WORK/lab-keepup-$1-$2 stopf poll_pid t0 t1 t out fmbs io_bytes amb maxbuf
    local catchup ratio name=keepup-$1 data=()
    # random: fresh random data in every block (incompressible); fio: fio's default buffers (the
    # data of jobs A and B), which zstd shrinks a little, so the process server compresses them.
    [[ $kind != random ]] || data=(--refill_buffers)
    start_lab "$d"
    stopf=$d.stop
    python3 "$PY" poll "$HAVEN_API" "$HAVEN_MT_API" "$d.samples" 0.1 "$stopf" &
    poll_pid=$!; PIDS+=("$poll_pid")
    sleep 0.3
    t0=$(date +%s.%N)
    if ! out=$(fio_run "$d-fio.json" "$HAVEN_NBD_URI" --ioengine=nbd --rw=write --bs=1M \
        --iodepth=8 --size=1g --kb_base=1000 --rate="$KEEPUP_RATE" --runtime="$KEEPUP_SECS" \
        --time_based "${data[@]}" --numjobs=1 --name=keepup); then
        touch "$stopf"; wait "$poll_pid" || true
        failed "$name" "$r" fio_mbs "fio keep-up job failed"; stop_lab "$d"; return 0
    fi
    read -r _ fmbs io_bytes _ _ <<<"$out"
    t1=$(date +%s.%N)
    if py catchup "$HAVEN_API" - "$io_bytes" 300 >/dev/null; then
        catchup=$(python3 -c "import time; print(f'{time.time()-$t1-1.1:.1f}')")
        record "$name" "$r" catchup_s "$catchup"
    else
        failed "$name" "$r" catchup_s "no catch-up after the keep-up job"
    fi
    touch "$stopf"; wait "$poll_pid" || true
    out=$(py keepup "$d.samples" "$t0" "$t1" 1048576)
    read -r amb maxbuf <<<"$out"
    out=$(py ps_ratio "$HAVEN_API")
    read -r _ _ ratio _ _ <<<"$out"
    record "$name" "$r" ps_ratio "$ratio"
    log "keep-up $kind run $r: asked $KEEPUP_RATE, fio $fmbs MB/s; applied $amb MB/s while writing; largest agent buffer $maxbuf MiB; caught up ~${catchup:-n/a} s after"
    record "$name" "$r" asked "$KEEPUP_RATE"; record "$name" "$r" fio_mbs "$fmbs"
    record "$name" "$r" applied_mbs "$amb"; record "$name" "$r" max_buf "$maxbuf"
    stop_lab "$d"
}

# --- 4. RPO under steady load ------------------------------------------------------------------
step_rpo() {
    local r=$1 d=$WORK/lab-rpo-$1 stopf poll_pid t0 t1 out mbs p50 p99 max n lag
    start_lab "$d"
    stopf=$d.stop
    python3 "$PY" poll "$HAVEN_API" - "$d.samples" 0.2 "$stopf" &
    poll_pid=$!; PIDS+=("$poll_pid")
    t0=$(date +%s.%N)
    if ! out=$(fio_run "$d-fio.json" "$HAVEN_NBD_URI" --ioengine=nbd --rw=randwrite \
        --bs="$RPO_BS" --iodepth=32 --size=1g --rate="$RPO_RATE" --runtime="$RPO_SECS" --time_based \
        --numjobs=1 --name=rpo); then
        touch "$stopf"; wait "$poll_pid" || true
        failed rpo "$r" p50 "fio RPO load failed"; stop_lab "$d"; return 0
    fi
    read -r _ mbs _ _ _ <<<"$out"
    t1=$(date +%s.%N)
    touch "$stopf"; wait "$poll_pid" || true
    out=$(py rpo "$d.samples" "$t0" "$t1")
    read -r p50 p99 max n lag <<<"$out"
    log "rpo run $r: fio $mbs MB/s; rpo_ms p50 $p50 p99 $p99 max $max over $n samples; max lag $lag seqs"
    record rpo "$r" mbs "$mbs"; record rpo "$r" p50 "$p50"; record rpo "$r" p99 "$p99"
    record rpo "$r" max "$max"; record rpo "$r" samples_lag "$n/$lag"
    stop_lab "$d"
}

log "work dir $WORK; $(nproc) CPUs; haven $HAVEN"
: >"$WORK/failures.txt"
for r in $(seq "$REPEAT"); do
    [[ $STEPS != *" qemu "* ]] || { step_qemu A "$r"; step_qemu C "$r"; step_qemu B "$r"; }
    [[ $STEPS != *" nbdkit "* ]] || { step_nbdkit A "$r"; step_nbdkit C "$r"; step_nbdkit B "$r"; }
    [[ $STEPS != *" haven "* ]] || { step_haven A "$r"; step_haven C "$r"; step_haven B "$r"; }
    [[ $STEPS != *" multi "* ]] || step_multi "$r"
    [[ $STEPS != *" e2e "* ]] || {
        step_e2e random "$r"; step_e2e compressible "$r"; step_e2e compressible-always "$r"
    }
    [[ $STEPS != *" keepup "* ]] || { step_keepup random "$r"; step_keepup fio "$r"; }
    [[ $STEPS != *" rpo "* ]] || step_rpo "$r"
done

echo
echo "## Results ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo))"
echo
py table "$RESULTS" "$REPEAT"
echo
if [[ -s $WORK/failures.txt ]]; then
    echo
    echo "Failures:"
    sed 's/^/- /' "$WORK/failures.txt"
fi
echo
echo "MB = 10^6 bytes. Commands run (temporary paths and ports vary):"
echo
echo '```'
awk '!seen[$0]++' "$COMMANDS" | sed "s#$WORK#\$WORK#g"
echo '```'
