#!/bin/sh
# Starts nats-server ("$@" are its arguments) with the three PiCloud role
# passwords in its environment, read from files so that they never appear
# in a compose file, a unit file or on a command line:
#
#   $NATS_SECRETS_DIR/nats-gateway-password    (default /run/secrets)
#   $NATS_SECRETS_DIR/nats-executor-password
#   $NATS_SECRETS_DIR/nats-manager-password
#
# The first line of each is the password; ../picloud-users.conf reads it as
# $PICLOUD_NATS_<ROLE>_PASSWORD. `scripts/cluster.sh secrets DIR` writes
# them (with a development CA and certificates).
set -eu
dir=${NATS_SECRETS_DIR:-/run/secrets}
for role in gateway executor manager; do
  file="$dir/nats-$role-password"
  if [ ! -r "$file" ]; then
    echo "nats: cannot read $file (scripts/cluster.sh secrets DIR writes it)" >&2
    exit 1
  fi
  password=$(head -n 1 "$file")
  if [ -z "$password" ]; then
    echo "nats: $file is empty" >&2
    exit 1
  fi
  upper=$(echo "$role" | tr '[:lower:]' '[:upper:]')
  export "PICLOUD_NATS_${upper}_PASSWORD=$password"
done
exec "${NATS_SERVER:-nats-server}" "$@"
