#!/bin/sh
# Install dist/boxbox as a service.
#
#   packaging/install.sh [--role server|client] [--user USER] [--init systemd|sysvinit|openrc|none]
#                        [--exe PATH] [DESTDIR=DIR]
#
# Installs the executable as /usr/local/bin/boxbox, creates the service user (server:
# `boxbox`; client: root, see below), the directories with their modes, an example config
# (never overwriting one that is there) and the unit or init script for the init system
# (detected, or --init). With DESTDIR (an argument or the environment) everything goes
# under that directory, as for a package build, and no user is created.
#
# The client runs as root by default because a backup has to read every file; with
# --user USER it runs as USER, and the systemd unit grants it CAP_DAC_READ_SEARCH only.
# Every line of output that starts with "installed " names one path it made, its mode and
# (when it could set it) its owner.
set -eu
umask 022
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")

die() {
    echo "boxbox: packaging/install.sh: $*" >&2
    exit 1
}

usage() {
    echo "usage: packaging/install.sh [--role server|client] [--user USER] [--init systemd|sysvinit|openrc|none] [--exe PATH] [DESTDIR=DIR]" >&2
    exit 2
}

role=server user="" init="" exe=$ROOT/dist/boxbox
DESTDIR=${DESTDIR:-}
while [ $# -gt 0 ]; do
    case $1 in
        --role|--user|--init|--exe)
            [ $# -ge 2 ] || usage
            case $1 in
                --role) role=$2 ;;
                --user) user=$2 ;;
                --init) init=$2 ;;
                --exe) exe=$2 ;;
            esac
            shift 2 ;;
        --role=*) role=${1#--role=}; shift ;;
        --user=*) user=${1#--user=}; shift ;;
        --init=*) init=${1#--init=}; shift ;;
        --exe=*) exe=${1#--exe=}; shift ;;
        DESTDIR=*) DESTDIR=${1#DESTDIR=}; shift ;;
        -h|--help) usage ;;
        *) echo "boxbox: packaging/install.sh: unknown argument '$1'" >&2; usage ;;
    esac
done

case $role in
    server) default_user=boxbox state=/var/lib/boxbox ;;
    client) default_user=root state=/var/lib/boxbox-client ;;
    *) die "unknown role '$role' (expected server or client)" ;;
esac
[ -n "$user" ] || user=$default_user
case $user in
    ''|-*|*[!A-Za-z0-9._-]*) die "'$user' is not a user name" ;;
esac
if [ "$role" = server ] && [ "$user" = root ]; then
    die "the server refuses to run as root; choose an ordinary user (default: boxbox)"
fi
[ -f "$exe" ] || die "$exe is missing: run build/shiv.sh first (or pass --exe PATH)"
case $DESTDIR in
    ''|/*) ;;
    *) DESTDIR=$(pwd)/$DESTDIR ;;
esac
DESTDIR=${DESTDIR%/}

if [ -z "$init" ]; then
    if [ -d /run/systemd/system ]; then
        init=systemd
    elif [ -x /sbin/openrc-run ] || command -v openrc-run >/dev/null 2>&1; then
        init=openrc
    elif [ -d /etc/init.d ]; then
        init=sysvinit
    else
        init=none
    fi
    echo "init system: $init (detected; --init chooses another)"
fi
case $init in
    systemd|sysvinit|openrc|none) ;;
    *) die "unknown init system '$init' (expected systemd, sysvinit, openrc or none)" ;;
esac

is_root=no
[ "$(id -u)" = 0 ] && is_root=yes

# ---- the service user
if [ -n "$DESTDIR" ]; then
    echo "user: not creating '$user' under DESTDIR (the package's install step does that)"
elif id "$user" >/dev/null 2>&1; then
    echo "user: '$user' exists"
elif [ "$is_root" = no ]; then
    echo "user: not creating '$user': not running as root"
elif command -v useradd >/dev/null 2>&1; then
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/sbin/nologin
    useradd --system --user-group --home-dir "$state" --no-create-home --shell "$nologin" \
        --comment "boxbox $role" "$user" || die "useradd $user failed"
    echo "user: created system user '$user'"
elif command -v adduser >/dev/null 2>&1; then
    # BusyBox (Alpine): -S system, -D no password, -H no home directory
    addgroup -S "$user" 2>/dev/null || true
    adduser -S -D -H -h "$state" -s /sbin/nologin -G "$user" "$user" || die "adduser $user failed"
    echo "user: created system user '$user'"
else
    die "cannot create user '$user': no useradd or adduser"
fi

# owner: "user:group" when this run can and should set owners, else empty
owner=""
if [ "$is_root" = yes ] && id "$user" >/dev/null 2>&1; then
    owner=$user:$(id -gn "$user")
fi
group_owner="" root_owner=""
if [ -n "$owner" ]; then group_owner=root:${owner#*:}; fi
if [ "$is_root" = yes ]; then root_owner=root:$(id -gn root); fi
group=$user
if [ -n "$owner" ]; then
    group=${owner#*:}
else
    echo "owners: not set (needs root and an existing user '$user'); only modes are"
fi

# put_dir PATH MODE [OWNER]: make the directory, set its mode (and owner when known)
put_dir() {
    mkdir -p "$DESTDIR$1"
    chmod "$2" "$DESTDIR$1"
    if [ -n "${3:-}" ]; then chown "$3" "$DESTDIR$1"; fi
    echo "installed $1/ $2${3:+ $3}"
}

# put_file SOURCE PATH MODE [OWNER]: copy through a temporary file and rename, so a running
# daemon keeps the old executable until it restarts
put_file() {
    mkdir -p "$(dirname "$DESTDIR$2")"
    tmp=$DESTDIR$2.tmp.$$
    cp "$1" "$tmp"
    chmod "$3" "$tmp"
    if [ -n "${4:-}" ]; then chown "$4" "$tmp"; fi
    mv -f "$tmp" "$DESTDIR$2"
    echo "installed $2 $3${4:+ $4}"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- executable, directories, config
put_file "$exe" /usr/local/bin/boxbox 0755 "$root_owner"
if [ -d "$DESTDIR/etc/boxbox" ] && [ "$user" = root ]; then
    echo "kept /etc/boxbox/ (exists)"
else
    # the server reads its config, certificate and key through the group
    put_dir /etc/boxbox 0750 "$group_owner"
fi
put_dir "$state" 0700 "$owner"
if [ "$role" = server ]; then
    put_dir /srv/boxbox 0750 "$group_owner"
    put_dir /srv/boxbox/0 0700 "$owner"
fi
if [ -e "$DESTDIR/etc/boxbox/$role.conf" ]; then
    echo "kept /etc/boxbox/$role.conf (exists; the new example is $HERE/examples/$role.conf)"
else
    put_file "$HERE/examples/$role.conf" "/etc/boxbox/$role.conf" 0640 "$group_owner"
fi

# ---- unit or init script, with the chosen user
name=boxbox-$role
case $init in
    systemd)
        src=$HERE/systemd/$name.service
        if [ "$user" = root ]; then
            cp "$src" "$work/unit"
        else
            sed -e "s/^User=.*/User=$user/" -e "s/^Group=.*/Group=$group/" \
                -e "s/^#AmbientCapabilities=/AmbientCapabilities=/" "$src" >"$work/unit"
        fi
        put_file "$work/unit" "/etc/systemd/system/$name.service" 0644 "$root_owner"
        ;;
    sysvinit|openrc)
        sed -e "s/^: \"\${BOXBOX_USER:=.*}\"\$/: \"\${BOXBOX_USER:=$user}\"/" "$HERE/$init/$name" >"$work/script"
        grep -q "^: \"\${BOXBOX_USER:=$user}\"\$" "$work/script" || die "could not set the user in $HERE/$init/$name"
        put_file "$work/script" "/etc/init.d/$name" 0755 "$root_owner"
        ;;
    none) echo "no init system: start it with: SHIV_ROOT=$state/shiv boxbox $role --config /etc/boxbox/$role.conf" ;;
esac

# ---- what next
echo
echo "next steps:"
if [ "$role" = server ]; then
    echo "  - put server.crt, server.key and ca.crt (from \`boxbox ca sign-server\`) in /etc/boxbox;"
    echo "    the key must be readable by '$user': chgrp $group /etc/boxbox/server.key; chmod 0640 /etc/boxbox/server.key"
    echo "  - edit /etc/boxbox/server.conf, then: boxbox config check server /etc/boxbox/server.conf"
    echo "  - create accounts as '$user' (files the server must write): sudo -u $user SHIV_ROOT=$state/shiv \\"
    echo "      boxbox accounts --config /etc/boxbox/server.conf create 1 --soft 10G --hard 12G"
else
    echo "  - put client.crt, client.key and ca.crt (from \`boxbox ca sign-client\`) in /etc/boxbox"
    echo "  - make the keys file (boxbox client init) and copy it somewhere safe: without it nothing can be restored"
    echo "  - edit /etc/boxbox/client.conf, then: boxbox config check client /etc/boxbox/client.conf"
fi
case $init in
    systemd) echo "  - systemctl daemon-reload && systemctl enable --now $name" ;;
    sysvinit) echo "  - update-rc.d $name defaults (or chkconfig --add $name) && /etc/init.d/$name start" ;;
    openrc) echo "  - rc-update add $name default && rc-service $name start" ;;
    none) ;;
esac
