#!/usr/bin/env bash
# Starts the local servers the test suite talks to (Redis 6379, MariaDB 3306,
# Postgres 5432) when they are not already answering, and waits until they do.
# Machines of this kind start them before a session; CI may find one stopped.
set -euo pipefail

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
mariadb_up() { mariadb-admin -uroot -h 127.0.0.1 -P 3306 --connect-timeout=2 ping >/dev/null 2>&1; }
postgres_up() { pg_isready -q -h 127.0.0.1 -p 5432; }

redis_up || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
  --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
mariadb_up || start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
postgres_up || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start

for _ in $(seq 1 60); do
  if redis_up && mariadb_up && postgres_up; then
    exit 0
  fi
  sleep 1
done
echo "services.sh: Redis, MariaDB or Postgres did not come up within 60 s" >&2
redis_up || echo "  redis is down" >&2
mariadb_up || echo "  mariadb is down" >&2
postgres_up || echo "  postgres is down" >&2
exit 1
