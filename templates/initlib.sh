# --- initbuild shell library (POSIX sh; included into both /init scripts) -------------------------
# Logging goes to /dev/kmsg with an "initbuild:" prefix and the uptime, so boot steps can be timed
# from the kernel log; errors also go to the console, where a person (or a test) sees them.

IB_LOGLEVEL=6
IB_PANIC={{ panic | sh }}
IB_DEBUG=0
IB_BREAK=
IB_KMSG=/dev/kmsg
IB_VERITY=0 IB_SHARED=

# Sets IB_UP to the uptime in seconds (a builtin read: no fork per log line).
ib_uptime() {
    { IFS=' ' read -r IB_UP _ib_idle < /proc/uptime; } 2>/dev/null || IB_UP='?'
}

# ib_log LEVEL MESSAGE...: LEVEL is a syslog priority (3 err, 4 warning, 6 info, 7 debug)
ib_log() {
    _ib_lvl=$1
    shift
    [ "$_ib_lvl" -le 7 ] || return 0
    if [ -w "$IB_KMSG" ]; then
        ib_uptime
        echo "<$_ib_lvl>initbuild: [$IB_UP] $*" > "$IB_KMSG" 2>/dev/null
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
    # a failure while the kernel reports a corrupt stage-two block is that corruption, whatever the
    # symptom was (EIO reads as "missing" to a shell test): name it (ib_verity_corrupt)
    if [ "$IB_VERITY" = 1 ] && ib_verity_corrupt; then
        ib_log 2 "FATAL: stage two failed verification ($IB_VERITY_ERR): $*"
    else
        ib_log 2 "FATAL: $*"
    fi
    ib_emergency
    return 1
}

ib_break() {
    [ "$IB_BREAK" = "$1" ] || return 0
    ib_log 4 "break point $1 reached (initbuild.break=$1)"
    IB_PANIC=shell ib_emergency
}

# The kernel command line, after the defaults baked into the image (later words win).
# Sets IB_CMDLINE: the baked-in defaults, then /proc/cmdline (builtin reads: no fork).
ib_cmdline() {
    IB_CMDLINE=
    for _ib_f in /etc/cmdline.d/*.conf /proc/cmdline; do
        [ -r "$_ib_f" ] || continue
        while IFS= read -r _ib_l || [ -n "$_ib_l" ]; do
            IB_CMDLINE="$IB_CMDLINE $_ib_l"
        done < "$_ib_f"
    done
}

# ib_parse_cmdline: sets IB_ARG_<key> for every "initbuild.<key>=<value>" and the root options.
ib_parse_cmdline() {
    ib_cmdline
    set -f
    for _ib_a in $IB_CMDLINE; do
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
    while read -r _ib_src _ib_dir _ib_rest; do
        [ "$_ib_dir" = "$1" ] && return 0
    done < /proc/mounts
    return 1
}

ib_mount_api() {
    [ -d /proc/self ] || mount -t proc -o nosuid,nodev,noexec proc /proc || die "cannot mount /proc"
    [ -d /sys/kernel ] || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || die "cannot mount /sys"
    # This kernel does not mount devtmpfs for an initramfs (CONFIG_DEVTMPFS_MOUNT only applies to
    # the root device), so /init does, or /dev would hold only what the image shipped.
    ib_is_mnt /dev || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev || die "cannot mount devtmpfs on /dev"
    [ -d /run ] || mkdir -p /run
}

# --- drivers on demand ------------------------------------------------------------------------
# The including /init defines (from the build): IB_ORDER "name=path ..." in load order,
# IB_DEP_<name> the modules to load for <name>, IB_HW "module|modalias-pattern ...",
# IB_FS "fstype|module ...", IB_NLS and IB_NLSFS (codepages and the filesystems needing them),
# IB_EAGER (requested modules that name no device), IB_FIRST (see ib_load_first). Like udev, a hardware driver is loaded only
# when a present device that no driver has claimed matches one of its aliases.

ib_want() {
    for _ib_m in "$@"; do
        _ib_deps=
        eval "_ib_deps=\${IB_DEP_$_ib_m-$_ib_m}"
        for _ib_x in $_ib_deps; do
            eval "IB_W_$_ib_x=1"
        done
    done
}

ib_insmod() {
    if [ ! -f "$2" ]; then
        die "driver $1: $2 is missing from the image"
        return 1
    fi
    if insmod "$2" 2>/run/.initbuild-insmod; then
        ib_log 7 "loaded $1"
        return 0
    fi
    [ -d "/sys/module/$1" ] && return 0
    die "cannot load driver $1 ($2): $(cat /run/.initbuild-insmod)"
}

# ib_load_wanted: insmod every wanted module not loaded yet, in build-time order.
ib_load_wanted() {
    for _ib_e in $IB_ORDER; do
        _ib_n=${_ib_e%%=*}
        _ib_w=
        eval "_ib_w=\${IB_W_$_ib_n-}"
        [ "$_ib_w" = 1 ] || continue
        [ -d "/sys/module/$_ib_n" ] && continue
        ib_insmod "$_ib_n" "${_ib_e#*=}"
    done
}

# ib_coldplug: want the drivers of unclaimed devices; true if that found anything new.
ib_coldplug() {
    _ib_new=1
    # shellcheck disable=SC2086 # IB_SCAN holds globs of the buses the aliases name
    for _ib_f in $IB_SCAN; do
        [ -e "${_ib_f%/modalias}/driver" ] && continue
        # (an unmatched glob names no file: the braces keep the shell's "can't open" off the console)
        { read -r _ib_a < "$_ib_f"; } 2>/dev/null || continue
        set -f
        for _ib_p in $IB_HW; do
            # shellcheck disable=SC2254 # the alias is a pattern on purpose
            case "$_ib_a" in ${_ib_p#*|})
                _ib_m=${_ib_p%%|*}
                _ib_w=
                eval "_ib_w=\${IB_W_$_ib_m-}"
                if [ "$_ib_w" != 1 ]; then
                    ib_log 7 "$_ib_a: $_ib_m"
                    ib_want "$_ib_m"
                    _ib_new=0
                fi
                ;;
            esac
        done
        set +f
    done
    return $_ib_new
}

# ib_load_first: the drivers that make loading every other one faster (IB_FIRST "module|pattern",
# such as the CPU-accelerated hash of module signature checks), when the CPU modalias matches. They
# are speed-ups: a failure is a warning.
ib_load_first() {
    [ -n "${IB_FIRST-}" ] || return 0
    _ib_cpu=
    set -f
    for _ib_p in $IB_FIRST; do
        _ib_m=${_ib_p%%|*}
        [ -d "/sys/module/$_ib_m" ] && continue
        # read only when needed: the shell reads it a byte per system call (after stage one: never)
        [ -n "$_ib_cpu" ] || { read -r _ib_cpu < /sys/devices/system/cpu/modalias; } 2>/dev/null
        # shellcheck disable=SC2254 # the alias is a pattern on purpose
        case "$_ib_cpu" in ${_ib_p#*|}) ;; *) continue ;; esac
        _ib_deps=
        eval "_ib_deps=\${IB_DEP_$_ib_m-$_ib_m}"
        for _ib_x in $_ib_deps; do
            [ -d "/sys/module/$_ib_x" ] && continue
            _ib_path=
            for _ib_e in $IB_ORDER; do
                [ "${_ib_e%%=*}" = "$_ib_x" ] && _ib_path=${_ib_e#*=} && break
            done
            if insmod "$_ib_path" 2>/run/.initbuild-insmod; then
                ib_log 7 "loaded $_ib_x (first: it speeds up loading the others)"
            else
                warn "cannot load $_ib_x ($_ib_path), continuing without it: $(cat /run/.initbuild-insmod)"
            fi
        done
    done
    set +f
}

# ib_drivers_eager: only the drivers named without a device (stage two after stage one, which
# already loaded the drivers of the devices present; the device wait still scans if need be).
ib_drivers_eager() {
    ib_load_first
    # shellcheck disable=SC2086 # a list of names
    ib_want $IB_EAGER
    ib_load_wanted
}

# ib_drivers_start: the eager drivers, then rounds of coldplug (a bus driver such as virtio_pci
# brings new devices with it). initbuild.drivers=all loads every driver of the image instead.
ib_drivers_start() {
    ib_load_first
    if [ "${IB_ARG_drivers-}" = all ]; then
        for _ib_e in $IB_ORDER; do
            # the first drivers only when the CPU has their feature (ib_load_first)
            case " ${IB_FIRST-} " in *" ${_ib_e%%=*}|"*) continue ;; esac
            eval "IB_W_${_ib_e%%=*}=1"
        done
    else
        # shellcheck disable=SC2086 # a list of names
        ib_want $IB_EAGER
    fi
    ib_load_wanted
    _ib_round=0
    while [ "$_ib_round" -lt 8 ] && ib_coldplug; do
        ib_load_wanted
        _ib_round=$((_ib_round + 1))
    done
}

# ib_load_fs TYPE: the module for a filesystem type (all of them for "auto" or ""), with codepages.
ib_load_fs() {
    for _ib_p in $IB_FS; do
        case "$1" in
            auto | "") ;;
            "${_ib_p%%|*}") ;;
            *) continue ;;
        esac
        ib_want "${_ib_p#*|}"
        case " $IB_NLSFS " in
            *" ${_ib_p%%|*} "*)
                # shellcheck disable=SC2086 # a list of names
                ib_want $IB_NLS
                ;;
        esac
    done
    ib_load_wanted
}

# ib_fstype DEV: sets IB_FSTYPE to the filesystem type written in DEV's superblock, or empty (and
# false) if it is none of those known here. A mount with no -t makes busybox try every type the
# kernel knows: each failed try of a device another mount holds logs "Can't open blockdev", and
# /init would load every filesystem driver of the image to let it probe. One od reads the first
# 1124 bytes (a second one reads btrfs's superblock at 64 KiB); the magic numbers are the kernels':
# ext2/3/4 0xEF53 at 1080 (ext4 when the extents, 64bit or flex_bg features are on, ext3 with a
# journal), erofs 0xE0F5E1E2 and f2fs 0xF2F52010 at 1024, xfs "XFSB" and squashfs "hsqs" at 0,
# vfat "FAT1"/"FAT32" in the boot sector with 0x55AA at 510, btrfs "_BHRfS_M" at 65600.
ib_fstype() {
    IB_FSTYPE=
    _ib_fsdev=$1
    # shellcheck disable=SC2046 # one word per byte
    set -- $(od -An -tx1 -v -N 1124 "$_ib_fsdev" 2>/dev/null)
    if [ $# -ge 1124 ]; then
        if [ "${1081}${1082}" = 53ef ]; then
            IB_FSTYPE=ext2
            [ $((0x${1117} & 0x04)) -ne 0 ] && IB_FSTYPE=ext3
            [ $((0x${1121} & 0xc0)) -ne 0 ] || [ $((0x${1122} & 0x02)) -ne 0 ] && IB_FSTYPE=ext4
        elif [ "${1025}${1026}${1027}${1028}" = e2e1f5e0 ]; then
            IB_FSTYPE=erofs
        elif [ "${1025}${1026}${1027}${1028}" = 1020f5f2 ]; then
            IB_FSTYPE=f2fs
        elif [ "$1$2$3$4" = 58465342 ]; then
            IB_FSTYPE=xfs
        elif [ "$1$2$3$4" = 68737173 ]; then
            IB_FSTYPE=squashfs
        elif [ "${511}${512}" = 55aa ] && { [ "${55}${56}${57}${58}" = 46415431 ] || [ "${83}${84}${85}${86}${87}" = 4641543332 ]; }; then
            IB_FSTYPE=vfat
        fi
    fi
    if [ -z "$IB_FSTYPE" ]; then
        # shellcheck disable=SC2046 # one word per byte
        set -- $(od -An -tx1 -v -j 65600 -N 8 "$_ib_fsdev" 2>/dev/null)
        [ "$*" = "5f 42 48 52 66 53 5f 4d" ] && IB_FSTYPE=btrfs
    fi
    [ -n "$IB_FSTYPE" ]
}

# ib_mount_type WHAT DEV TYPE: the type to mount DEV (WHAT names it in messages) with: TYPE when
# given (not auto), else the one its superblock names (ib_fstype), else "auto" (busybox probes).
# Sets IB_FSTYPE and loads that filesystem's driver (only that one, unless it is auto).
ib_mount_type() {
    case "$3" in
        "" | auto)
            if ib_fstype "$2"; then
                info "$1 ($2): $IB_FSTYPE filesystem (detected from its superblock)"
            else
                IB_FSTYPE=auto
                warn "$1 ($2): no known filesystem superblock; mount will probe every type"
            fi
            ;;
        *) IB_FSTYPE=$3 ;;
    esac
    ib_load_fs "$IB_FSTYPE"
}

# --- mounting an image file without a loop device -----------------------------------------------
# busybox mount sets up a loop device for any regular file. IB_MOUNT_FILE is initbuild's own mount(2)
# program (initbuild/formats/mountprog.py): "mount-file SOURCE TARGET FSTYPE" mounts read-only and
# exits with 0, the errno of the failed mount(2), or 255 for a wrong argument count.
IB_MOUNT_FILE=/usr/lib/initbuild/mount-file
# stage two's way out of an overlay root (pivot_root + lazy umount: see the final switch of its /init)
IB_PIVOT_ROOT=/usr/lib/initbuild/pivot-root

# ib_errno STATUS [PROGRAM]: sets IB_ERRNO to the name and meaning of the exit status of mount-file
# (or of PROGRAM, which follows the same convention: dm-ioctl).
ib_errno() {
    _ib_prog=${2:-$IB_MOUNT_FILE}
    case "$1" in
        1) IB_ERRNO="EPERM (operation not permitted)" ;;
        2) IB_ERRNO="ENOENT (no such file or directory)" ;;
        5) IB_ERRNO="EIO (input/output error)" ;;
        6) IB_ERRNO="ENXIO (no such device or address)" ;;
        12) IB_ERRNO="ENOMEM (cannot allocate memory)" ;;
        13) IB_ERRNO="EACCES (permission denied)" ;;
        14) IB_ERRNO="EFAULT (bad address)" ;;
        15) IB_ERRNO="ENOTBLK (block device required)" ;;
        16) IB_ERRNO="EBUSY (device or resource busy)" ;;
        19) IB_ERRNO="ENODEV (no such device: a filesystem type the kernel does not know)" ;;
        20) IB_ERRNO="ENOTDIR (not a directory)" ;;
        22) IB_ERRNO="EINVAL (invalid argument)" ;;
        24) IB_ERRNO="EMFILE (too many open files)" ;;
        30) IB_ERRNO="EROFS (read-only file system)" ;;
        36) IB_ERRNO="ENAMETOOLONG (file name too long)" ;;
        40) IB_ERRNO="ELOOP (too many levels of symbolic links)" ;;
        95) IB_ERRNO="EOPNOTSUPP (operation not supported)" ;;
        117) IB_ERRNO="EUCLEAN (structure needs cleaning: a corrupt filesystem)" ;;
        126) IB_ERRNO="the shell cannot execute $_ib_prog" ;;
        127) IB_ERRNO="$_ib_prog is missing" ;;
        255) IB_ERRNO="$_ib_prog: wrong number of arguments" ;;
        *) IB_ERRNO="errno $1" ;;
    esac
}

# ib_mount_file SOURCE TARGET FSTYPE: mount(2) read-only with no loop device; on failure, IB_ERRNO
# names the error.
ib_mount_file() {
    "$IB_MOUNT_FILE" "$1" "$2" "$3"
    _ib_rc=$?
    [ "$_ib_rc" -eq 0 ] && return 0
    ib_errno "$_ib_rc"
    return 1
}

# --- dm-verity (modules.d/25verity) --------------------------------------------------------------
# Stage one maps stage two through a dm-verity target whose root hash is baked into stage one
# (/etc/initbuild/verity.conf). The kernel checks each block of stage two against the hash tree when
# it is read; a block that does not match is an I/O error (EIO), never data, and the kernel logs
# "device-mapper: verity: DEV: data|metadata block N is corrupted". A shell sees EIO as a failed
# command or a false test, so die() names the corruption whenever the kernel has reported one, and
# ib_verity_check turns a corruption that only the kernel noticed into a failure: never a silent boot.
IB_VERITY_CONF=/etc/initbuild/verity.conf
IB_DM_IOCTL=/usr/lib/initbuild/dm-ioctl
IB_DM_REQUESTS=/usr/lib/initbuild/dm
IB_DM_NAME=initbuild-stage2
IB_VERITY_roothash='' IB_VERITY_salt='' IB_VERITY_data_blocks='' IB_VERITY_hash_start_block=''
IB_VERITY_hash_algorithm='' IB_VERITY_data_block_size='' IB_VERITY_hash_block_size='' IB_VERITY_preread=''

# ib_verity_load: IB_VERITY=1 and IB_VERITY_<key> from verity.conf, if this stage one has one.
# initbuild.roothash= (e.g. on a signed UKI's .cmdline) pins stage two: it must equal the baked hash.
ib_verity_load() {
    if [ ! -r "$IB_VERITY_CONF" ]; then
        [ -z "${IB_ARG_roothash-}" ] || die "initbuild.roothash= is given, but this stage one was built without stage2.verity: it cannot verify stage two"
        return 0
    fi
    while read -r _ib_k _ib_v; do
        case "$_ib_k" in
            roothash | salt | data_blocks | hash_start_block | hash_algorithm | data_block_size | hash_block_size | preread) eval "IB_VERITY_$_ib_k=\$_ib_v" ;;
        esac
    done < "$IB_VERITY_CONF"
    IB_VERITY=1
    if [ -n "${IB_ARG_roothash-}" ]; then
        _ib_want=$(echo "$IB_ARG_roothash" | tr 'A-F' 'a-f')
        [ "$_ib_want" = "$IB_VERITY_roothash" ] || die "initbuild.roothash=$IB_ARG_roothash is not the root hash of stage two baked into stage one ($IB_VERITY_roothash): refusing to boot it"
    fi
}

# ib_verity_corrupt: true if the kernel has reported a corrupt dm-verity block; IB_VERITY_ERR is its line.
ib_verity_corrupt() {
    IB_VERITY_ERR=$(dmesg 2>/dev/null | grep 'device-mapper: verity: .* is corrupted' | head -n 1)
    IB_VERITY_ERR=${IB_VERITY_ERR#*] }
    [ -n "$IB_VERITY_ERR" ]
}

# ib_verity_check WHEN: a checkpoint: fail if the kernel has reported a corrupt block of stage two.
ib_verity_check() {
    [ "$IB_VERITY" = 1 ] || return 0
    if ib_verity_corrupt; then
        die "a block of stage two was rejected ($1)"
    fi
    return 0
}

# ib_dm WHAT FILE: send one device-mapper request with dm-ioctl (initbuild/formats/dmprog.py).
ib_dm() {
    "$IB_DM_IOCTL" "$2" && return 0
    ib_errno $? "$IB_DM_IOCTL"
    _ib_klog=$(dmesg 2>/dev/null | grep 'device-mapper:' | tail -n 2 | tr '\n' ' ')
    die "cannot set up dm-verity for stage two: $1: $IB_ERRNO${_ib_klog:+; kernel says: $_ib_klog}"
    return 1
}

# ib_verity_open DEV: map DEV through dm-verity (the table of verity.rst, with the baked root hash);
# sets IB_VERITY_DEV to the verified device node.
ib_verity_open() {
    [ -c /dev/mapper/control ] || die "no /dev/mapper/control: the device-mapper driver (dm_mod) is not loaded"
    _ib_req=/run/.initbuild-dm-load
    # the request written by the build, then the target's parameters as text
    cat "$IB_DM_REQUESTS/load" > "$_ib_req" || die "cannot copy $IB_DM_REQUESTS/load to $_ib_req"
    printf '1 %s %s %s %s %s %s %s %s %s' "$1" "$1" "$IB_VERITY_data_block_size" "$IB_VERITY_hash_block_size" \
        "$IB_VERITY_data_blocks" "$IB_VERITY_hash_start_block" "$IB_VERITY_hash_algorithm" \
        "$IB_VERITY_roothash" "$IB_VERITY_salt" >> "$_ib_req"
    ib_dm "DM_DEV_CREATE $IB_DM_NAME" "$IB_DM_REQUESTS/create" || return 1
    ib_dm "DM_TABLE_LOAD verity over $1" "$_ib_req" || return 1
    ib_dm "DM_DEV_SUSPEND (resume) $IB_DM_NAME" "$IB_DM_REQUESTS/resume" || return 1
    IB_VERITY_DEV=
    for _ib_d in /sys/block/dm-*; do
        { read -r _ib_n < "$_ib_d/dm/name"; } 2>/dev/null || continue
        [ "$_ib_n" = "$IB_DM_NAME" ] && IB_VERITY_DEV=/dev/${_ib_d##*/}
    done
    [ -b "$IB_VERITY_DEV" ] || die "the dm-verity device $IB_DM_NAME has no node in /dev"
    info "stage two verified by dm-verity: $IB_VERITY_DEV over $1, root hash $IB_VERITY_roothash"
}

# ib_share ROOT: bind stage one's copies of the files stage two's PID 1 runs from (/etc/initbuild/shared,
# written by the build when both stages hold the same file) over stage two's, in ROOT: they are in RAM
# and were authenticated with stage one, so they need no reading through dm-verity. Sets IB_SHARED.
ib_share() {
    IB_SHARED=
    [ -r /etc/initbuild/shared ] || return 0
    while read -r _ib_f; do
        [ -f "$_ib_f" ] && [ -f "$1$_ib_f" ] || continue
        if mount --bind "$_ib_f" "$1$_ib_f"; then
            IB_SHARED="$IB_SHARED $_ib_f"
        else
            warn "cannot bind $_ib_f over stage two's: stage two's own copy is read and verified"
        fi
    done < /etc/initbuild/shared
    [ -z "$IB_SHARED" ] || info "stage two runs stage one's$IB_SHARED (the same file, already in RAM)"
}

# ib_verity_preread ROOT: read (so verify) the stage-two files its PID 1 runs from before handing over:
# a read error inside PID 1 would kill it (a kernel panic) before it could say anything.
ib_verity_preread() {
    for _ib_f in $IB_VERITY_preread; do
        case " $IB_SHARED " in *" $_ib_f "*) continue ;; esac  # stage one's own copy, bound over it
        cat "$1$_ib_f" > /dev/null 2> /run/.initbuild-read || die "cannot read $_ib_f of stage two: $(cat /run/.initbuild-read)"
    done
}

# Storage devices that no driver claimed: what is missing when a disk never shows up.
ib_unclaimed() {
    _ib_u=
    for _ib_f in /sys/bus/*/devices/*/modalias; do
        [ -e "${_ib_f%/modalias}/driver" ] && continue
        { read -r _ib_a < "$_ib_f"; } 2>/dev/null || continue
        case "$_ib_a" in
            pci:*bc01* | virtio:* | scsi:* | nd:* | usb:*) _ib_u="$_ib_u $_ib_a" ;;
        esac
    done
    echo "${_ib_u# }"
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

# ib_wait_dev SPEC TIMEOUT [HINT]: wait (bounded) for a device; sets IB_DEV to its node.
ib_wait_dev() {
    _ib_tries=$(($2 * 10))
    IB_DEV=
    while [ "$_ib_tries" -gt 0 ]; do
        if [ -n "$3" ] && [ -b "$3" ]; then
            case "$1" in /dev/*) IB_DEV=$3; return 0 ;; esac
        fi
        IB_DEV=$(ib_find_dev "$1")
        [ -n "$IB_DEV" ] && return 0
        # devices may appear late (asynchronous probing, USB): give them their drivers
        ib_coldplug && ib_load_wanted
        sleep 0.1
        _ib_tries=$((_ib_tries - 1))
    done
    return 1
}

# What the kernel sees, for error messages about missing devices.
ib_devices_seen() {
    _ib_seen=$(awk 'NR > 2 { printf "%s%s", s, $4; s = " " }' /proc/partitions 2>/dev/null)
    _ib_mods=$(awk '{ printf "%s%s", s, $1; s = " " }' /proc/modules 2>/dev/null)
    _ib_unc=$(ib_unclaimed)
    echo "block devices: ${_ib_seen:-none}; drivers loaded: ${_ib_mods:-none}${_ib_unc:+; storage devices no driver in the image claims: $_ib_unc}"
}

ib_marker() {
    read -r _ib_up _ib_idle < /proc/uptime
    _ib_mem=$(sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo)
    _ib_line="initbuild-marker: $1 uptime=$_ib_up memavailable_kb=$_ib_mem"
    echo "<2>$_ib_line" > "$IB_KMSG" 2>/dev/null
    echo "$_ib_line" > /dev/console 2>/dev/null
}
# --- end of initbuild shell library ---------------------------------------------------------------
