# Loopback ports for the test scripts' private servers (sourced; bash only:
# a fresh machine may lack python). Ports are taken below the kernel's
# ephemeral range, so an outgoing connection's local port cannot take one
# between the check and the server's bind.

# The first port of the ephemeral range (32768 unless the machine says).
ephemeral_low() {
  local lo _
  read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || lo=32768
  echo "${lo:-32768}"
}

# Whether nothing answers on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A free loopback port below the ephemeral range.
free_port() {
  local p
  for p in $(shuf -i 10000-$(($(ephemeral_low) - 1)) -n 200); do
    if port_free "$p"; then echo "$p"; return 0; fi
  done
  echo "no free port found" >&2
  return 1
}

# A multiple of 100 (BASE) below the ephemeral range where BASE + every
# OFFSET given is free, for a block of up to 400 ports.
free_block() {
  local base off ok _
  for _ in $(seq 50); do
    base=$(($(shuf -i 100-$((($(ephemeral_low) - 400) / 100)) -n 1) * 100))
    ok=1
    for off in "$@"; do
      port_free $((base + off)) || { ok=0; break; }
    done
    [ "$ok" = 1 ] && { echo "$base"; return 0; }
  done
  echo "no free block of ports found" >&2
  return 1
}
