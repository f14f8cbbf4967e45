#!/bin/sh
# Issue the cluster CA and one certificate per host, for docker-compose.yml's
# one-shot `certs` service (also usable by hand).
#
#   issue-certs.sh HOST[,EXTRA_NAME...] ...
#
# The CA (ca.pem, ca-key.pem) lives in $CA_DIR (default /ca), a volume that
# only this service mounts, so no running service can read the CA key. Each
# HOST gets HOST.pem and HOST-key.pem (0600) naming HOST and any extra names
# (certificates name host names, never IP addresses); they and ca.pem are
# copied to $CERTS_DIR (default /certs), the volume the services mount read
# only.
#
# Safe to run again: the CA is created once, and a host's certificate is
# issued again only when its list of names changed or BATON_CERTS_RENEW=1
# (renewal before the 825-day validity runs out; the CA is kept, so clients
# that trust it keep working). Any failure stops the script with a non-zero
# status, and compose then starts nothing that depends on it.
set -eu

CA_DIR=${CA_DIR:-/ca}
CERTS_DIR=${CERTS_DIR:-/certs}
RENEW=${BATON_CERTS_RENEW:-0}

if [ "$#" -eq 0 ]; then
    echo "usage: $0 HOST[,EXTRA_NAME...] ..." >&2
    exit 2
fi

umask 077
mkdir -p "$CA_DIR" "$CERTS_DIR"

if [ ! -f "$CA_DIR/ca.pem" ] || [ ! -f "$CA_DIR/ca-key.pem" ]; then
    echo "certs: creating a new certificate authority in $CA_DIR"
    baton certs ca --dir "$CA_DIR"
    RENEW=1  # certificates of an older CA would not verify any more
fi

for spec in "$@"; do
    host=${spec%%,*}
    names_file="$CA_DIR/$host.names"
    if [ "$RENEW" = 1 ] || [ ! -f "$CA_DIR/$host.pem" ] || [ ! -f "$names_file" ] \
            || [ "$(cat "$names_file")" != "$spec" ]; then
        # Build "--name A --name B ..." from the comma-separated spec.
        set --
        old_ifs=$IFS
        IFS=,
        for name in $spec; do
            [ -n "$name" ] && set -- "$@" --name "$name"
        done
        IFS=$old_ifs
        echo "certs: issuing $host.pem for $spec"
        baton certs issue --dir "$CA_DIR" "$@"
        printf '%s' "$spec" > "$names_file"
    fi
    cp "$CA_DIR/$host.pem" "$CA_DIR/$host-key.pem" "$CERTS_DIR/"
    chmod 0644 "$CERTS_DIR/$host.pem"
    chmod 0600 "$CERTS_DIR/$host-key.pem"
done

# The agents' gRPC client certificate: a pool certificate (any agent name),
# because the replicas of the scaled `agent` service are named after their
# container ids, unknown in advance (deploy/README.md, "More agents"). The
# agents also serve compile jobs with it (TLS); one issued before they did
# (clientAuth only, no marker) is issued again.
if [ "${BATON_AGENT_POOL_CERT:-1}" = 1 ]; then
    if [ "$RENEW" = 1 ] || [ ! -f "$CA_DIR/agent-pool.pem" ] || [ ! -f "$CA_DIR/agent-pool.serves" ]; then
        echo "certs: issuing agent-pool.pem (any agent name)"
        baton certs agent --dir "$CA_DIR" --name pool --any-name
        : > "$CA_DIR/agent-pool.serves"
    fi
    cp "$CA_DIR/agent-pool.pem" "$CA_DIR/agent-pool-key.pem" "$CERTS_DIR/"
    chmod 0644 "$CERTS_DIR/agent-pool.pem"
    chmod 0600 "$CERTS_DIR/agent-pool-key.pem"
fi

# etcd identities (docs/etcd-auth.md): BATON_ETCD_IDENTITIES lists
# IDENTITY=DIR words (root, coordinator:NAME, agent-pool, ...); each DIR gets
# etcd.pem and etcd-key.pem whose common name is that etcd user. Kept when
# current, like the host certificates above.
if [ -n "${BATON_ETCD_IDENTITIES:-}" ]; then
    renew_flag=
    [ "$RENEW" = 1 ] && renew_flag=--renew
    # shellcheck disable=SC2086 # one word per identity, and the optional flag
    python3 -m cli.etcd_setup certs --ca-dir "$CA_DIR" $renew_flag $BATON_ETCD_IDENTITIES
fi

cp "$CA_DIR/ca.pem" "$CERTS_DIR/ca.pem"
chmod 0644 "$CERTS_DIR/ca.pem"
# Never let the CA key reach the shared volume (e.g. from an older layout).
rm -f "$CERTS_DIR/ca-key.pem"
echo "certs: ready in $CERTS_DIR"
