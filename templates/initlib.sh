# --- initbuild shell library (POSIX sh; included into both /init scripts) -------------------------
# Logging goes to /dev/kmsg with an "initbuild:" prefix and the uptime, so boot steps can be timed
# from the kernel log; errors also go to the console, where a person (or a test) sees them.

IB_LOGLEVEL=6
IB_PANIC={{ panic | sh }}
IB_DEBUG=0
IB_BREAK=
IB_KMSG=/dev/kmsg

ib_uptime() {
    IFS=' ' read -r _ib_up _ib_idle < /proc/uptime 2>/dev/null || _ib_up='?'
    echo "$_ib_up"
}

# ib_log LEVEL MESSAGE...: LEVEL is a syslog priority (3 err, 4 warning, 6 info, 7 debug)
ib_log() {
    _ib_lvl=$1
    shift
    [ "$_ib_lvl" -le 7 ] || return 0
    if [ -w "$IB_KMSG" ]; then
        echo "<$_ib_lvl>initbuild: [$(ib_uptime)] $*" > "$IB_KMSG" 2>/dev/null
    fi
    if [ "$_ib_lvl" -le 4 ] || [ "$IB_DEBUG" = 1 ]; then
        echo "initbuild: $*" > /dev/console 2>/dev/null
    fi
    return 0
}

info() { ib_log 6 "$@"; }
warn() { ib_log 4 "warning: $*"; }

# ib_emergency: after a failure (or initbuild.break), per initbuild.panic=shell|reboot|poweroff.
# A shell whose input ends (no console attached) is started again after a pause: PID 1 must
# never exit, or the kernel panics with no explanation.
ib_emergency() {
    case "$IB_PANIC" in
        reboot)
            ib_log 2 "rebooting (initbuild.panic=reboot)"
            sleep 1
            reboot -f
            ;;
        poweroff)
            ib_log 2 "powering off (initbuild.panic=poweroff)"
            sleep 1
            poweroff -f
            ;;
    esac
    echo "initbuild: starting an emergency shell; 'exit' continues the boot where it stopped" > /dev/console
    [ -c /dev/console ] && exec 0</dev/console 1>/dev/console 2>&1
    if command -v setsid >/dev/null 2>&1 && command -v cttyhack >/dev/null 2>&1; then
        setsid cttyhack sh -i
    else
        sh -i
    fi
    sleep 1
}

# die MESSAGE...: say what failed and why, then stop per initbuild.panic. Never returns unless
# the user leaves the emergency shell, in which case the caller retries or continues.
die() {
    ib_log 2 "FATAL: $*"
    ib_emergency
    return 1
}

ib_break() {
    [ "$IB_BREAK" = "$1" ] || return 0
    ib_log 4 "break point $1 reached (initbuild.break=$1)"
    IB_PANIC=shell ib_emergency
}

# The kernel command line, after the defaults baked into the image (later words win).
ib_cmdline() {
    _ib_cl=
    for _ib_f in /etc/cmdline.d/*.conf; do
        [ -f "$_ib_f" ] && _ib_cl="$_ib_cl $(cat "$_ib_f")"
    done
    [ -r /proc/cmdline ] && _ib_cl="$_ib_cl $(cat /proc/cmdline)"
    echo "$_ib_cl"
}

# ib_parse_cmdline: sets IB_ARG_<key> for every "initbuild.<key>=<value>" and the root options.
ib_parse_cmdline() {
    set -f
    for _ib_a in $(ib_cmdline); do
        case "$_ib_a" in
            initbuild.debug | initbuild.debug=1) IB_DEBUG=1 ;;
            initbuild.break=*) IB_BREAK=${_ib_a#initbuild.break=} ;;
            initbuild.panic=*) IB_PANIC=${_ib_a#initbuild.panic=} ;;
            initbuild.*=*)
                _ib_k=${_ib_a%%=*}
                _ib_k=${_ib_k#initbuild.}
                case "$_ib_k" in
                    *[!a-z0-9_]*) warn "ignoring malformed option $_ib_a" ;;
                    *) eval "IB_ARG_$_ib_k=\${_ib_a#*=}" ;;
                esac
                ;;
            root=*) IB_ROOT=${_ib_a#root=} ;;
            rootfstype=*) IB_ROOTFSTYPE=${_ib_a#rootfstype=} ;;
            rootflags=*) IB_ROOTFLAGS=${_ib_a#rootflags=} ;;
            init=*) IB_INIT=${_ib_a#init=} ;;
            ro) IB_ROOTRW=ro ;;
            rw) IB_ROOTRW=rw ;;
        esac
    done
    set +f
    case "$IB_PANIC" in shell | reboot | poweroff) ;; *) warn "unknown initbuild.panic=$IB_PANIC, using shell"; IB_PANIC=shell ;; esac
}

ib_is_mnt() {
    grep -q "^[^ ]* $1 " /proc/mounts 2>/dev/null
}

ib_mount_api() {
    [ -d /proc/self ] || mount -t proc -o nosuid,nodev,noexec proc /proc || die "cannot mount /proc"
    [ -d /sys/kernel ] || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || die "cannot mount /sys"
    # This kernel does not mount devtmpfs for an initramfs (CONFIG_DEVTMPFS_MOUNT only applies to
    # the root device), so /init does, or /dev would hold only what the image shipped.
    ib_is_mnt /dev || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev || die "cannot mount devtmpfs on /dev"
    mkdir -p /dev/pts /run
}

# ib_load_drivers NAME=PATH...: insmod in the given (build-time, dependency) order.
ib_load_drivers() {
    for _ib_d in "$@"; do
        _ib_name=${_ib_d%%=*}
        _ib_path=${_ib_d#*=}
        [ -d "/sys/module/$_ib_name" ] && continue
        if [ ! -f "$_ib_path" ]; then
            die "driver $_ib_name: $_ib_path is missing from the image"
            continue
        fi
        _ib_err=$(insmod "$_ib_path" 2>&1) || {
            [ -d "/sys/module/$_ib_name" ] && continue
            die "cannot load driver $_ib_name ($_ib_path): $_ib_err"
        }
        ib_log 7 "loaded $_ib_name"
    done
}

# Partition UUID as the kernel and blkid print it: GPT unique GUID, or MBR "SSSSSSSS-PP".
ib_partuuid() {
    _ib_sys=/sys/class/block/$1
    [ -f "$_ib_sys/partition" ] || return 1
    _ib_n=$(cat "$_ib_sys/partition")
    _ib_disk=$(basename "$(dirname "$(readlink -f "$_ib_sys")")")
    _ib_dev=/dev/$_ib_disk
    [ -b "$_ib_dev" ] || return 1
    if [ "$(dd if="$_ib_dev" bs=1 skip=512 count=8 2>/dev/null)" = "EFI PART" ]; then
        # GPT header at LBA 1: entries LBA (le64 at 72), entry size (le32 at 84)
        # shellcheck disable=SC2046 # od prints numbers: split them into $1 $2
        set -- $(od -An -tu4 -j $((512 + 72)) -N 4 "$_ib_dev") $(od -An -tu4 -j $((512 + 84)) -N 4 "$_ib_dev")
        _ib_off=$(($1 * 512 + (_ib_n - 1) * $2 + 16))
        # shellcheck disable=SC2046 # one word per byte
        set -- $(od -An -tx1 -j "$_ib_off" -N 16 "$_ib_dev")
        echo "$4$3$2$1-$6$5-$8$7-$9${10}-${11}${12}${13}${14}${15}${16}"
    else
        # shellcheck disable=SC2046 # one word per byte
        set -- $(od -An -tx1 -j 440 -N 4 "$_ib_dev")
        printf '%s-%02x\n' "$4$3$2$1" "$_ib_n"
    fi
}

# ib_find_dev SPEC: print the device node for /dev/..., UUID=, LABEL=, PARTUUID=, PARTLABEL=.
ib_find_dev() {
    case "$1" in
        /dev/*) [ -b "$1" ] && echo "$1" ;;
        UUID=* | LABEL=*) findfs "$1" 2>/dev/null ;;
        PARTLABEL=*)
            for _ib_u in /sys/class/block/*/uevent; do
                grep -qx "PARTNAME=${1#PARTLABEL=}" "$_ib_u" 2>/dev/null || continue
                _ib_n=$(sed -n 's/^DEVNAME=//p' "$_ib_u")
                [ -b "/dev/$_ib_n" ] && echo "/dev/$_ib_n" && return 0
            done
            ;;
        PARTUUID=*)
            _ib_want=$(echo "${1#PARTUUID=}" | tr 'A-F' 'a-f')
            for _ib_s in /sys/class/block/*; do
                [ -f "$_ib_s/partition" ] || continue
                _ib_n=$(basename "$_ib_s")
                [ "$(ib_partuuid "$_ib_n")" = "$_ib_want" ] && [ -b "/dev/$_ib_n" ] && echo "/dev/$_ib_n" && return 0
            done
            ;;
    esac
    return 0
}

# ib_wait_dev SPEC TIMEOUT [HINT]: wait (bounded) for a device; prints its node.
ib_wait_dev() {
    _ib_tries=$(($2 * 10))
    while [ "$_ib_tries" -gt 0 ]; do
        if [ -n "$3" ] && [ -b "$3" ]; then
            case "$1" in /dev/*) echo "$3"; return 0 ;; esac
        fi
        _ib_found=$(ib_find_dev "$1")
        [ -n "$_ib_found" ] && echo "$_ib_found" && return 0
        sleep 0.1
        _ib_tries=$((_ib_tries - 1))
    done
    return 1
}

# What the kernel sees, for error messages about missing devices.
ib_devices_seen() {
    _ib_seen=$(awk 'NR > 2 { printf "%s%s", s, $4; s = " " }' /proc/partitions 2>/dev/null)
    _ib_mods=$(awk '{ printf "%s%s", s, $1; s = " " }' /proc/modules 2>/dev/null)
    echo "block devices: ${_ib_seen:-none}; drivers loaded: ${_ib_mods:-none}"
}

ib_marker() {
    read -r _ib_up _ib_idle < /proc/uptime
    _ib_mem=$(sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo)
    _ib_line="initbuild-marker: $1 uptime=$_ib_up memavailable_kb=$_ib_mem"
    echo "<2>$_ib_line" > "$IB_KMSG" 2>/dev/null
    echo "$_ib_line" > /dev/console 2>/dev/null
}
# --- end of initbuild shell library ---------------------------------------------------------------
