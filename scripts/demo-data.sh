#!/usr/bin/env bash
# Demo / test data: three tenant databases shop1, shop2, shop3 on a MariaDB (the demo's own).
#
#   scripts/demo-data.sh            (re)create shop1..shop3 and fill them, then print row counts
#   scripts/demo-data.sh --print    only print the SQL (e.g. `scripts/demo-data.sh --print > x.sql`)
#
# Each database is dropped and created again, so the result is the same on every run. Rows are
# generated in SQL with recursive CTEs; every value derives from the row number and the tenant
# number (no RAND(), no NOW()), so two runs give byte-identical data.
#   tables: users (PK id), products (PK sku), orders (PK id), page_views (no primary key,
#           with some exact duplicate rows)
#   rows at DEMO_SCALE=1   users  products  orders  page_views
#     shop1                  200        50    1000         300
#     shop2                  150        40     700         200
#     shop3                  100        30     400         100
# Env: DEMO_SCALE (positive integer, default 1) multiplies every row count;
#      MYSQL_PORT (required: scripts/demo.sh passes its private server's; the script drops and
#      recreates shop1..shop3, so it never picks a server on its own), MYSQL_HOST (127.0.0.1),
#      MYSQL_USER (root), MYSQL_PWD (empty).
set -euo pipefail

SCALE="${DEMO_SCALE:-1}"
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || { echo "demo-data: error: DEMO_SCALE must be a positive integer (got '$SCALE')" >&2; exit 2; }

# tenant number, database, users, products, orders, page_views (at scale 1)
TENANTS=(
  "1 shop1 200 50 1000 300"
  "2 shop2 150 40 700 200"
  "3 shop3 100 30 400 100"
)

# The per-tenant SQL. It reads @t (tenant number), @users, @products, @orders, @views and runs
# in the tenant's database. Literal heredoc: no shell expansion inside.
tenant_sql() {
  cat <<'SQL'
CREATE TABLE users (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  email       VARCHAR(190) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
  name        VARCHAR(100) NULL,
  balance     DECIMAL(12,2) NOT NULL DEFAULT 0.00,
  is_active   TINYINT(1) NOT NULL DEFAULT 1,
  created_at  DATETIME(3) NOT NULL,
  updated_at  TIMESTAMP(6) NULL DEFAULT NULL,
  UNIQUE KEY uq_users_email (email),
  KEY ix_users_updated_at (updated_at)
) ENGINE=InnoDB;

CREATE TABLE products (
  sku          VARCHAR(32) NOT NULL PRIMARY KEY,
  title        TEXT NULL,
  price        DECIMAL(10,2) NOT NULL,
  weight_kg    DOUBLE NULL,
  attributes   JSON NULL,
  created_at   DATETIME NOT NULL,
  update_time  DATETIME(6) NOT NULL,
  KEY ix_products_update_time (update_time)
) ENGINE=InnoDB;

CREATE TABLE orders (
  id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user_id     BIGINT UNSIGNED NOT NULL,
  sku         VARCHAR(32) NOT NULL,
  quantity    INT NOT NULL,
  amount      DECIMAL(14,4) NOT NULL,
  status      ENUM('new','paid','shipped','cancelled') NOT NULL DEFAULT 'new',
  note        VARCHAR(255) NULL,
  ordered_on  DATE NOT NULL,
  created_at  DATETIME(3) NOT NULL,
  updated_at  DATETIME(6) NOT NULL,
  KEY ix_orders_updated_at (updated_at),
  KEY ix_orders_user (user_id)
) ENGINE=InnoDB;

-- no primary key on purpose (the connector must cope); every 50th row duplicates the one before
CREATE TABLE page_views (
  user_id    BIGINT NULL,
  path       VARCHAR(255) NOT NULL,
  viewed_at  DATETIME(6) NOT NULL,
  referrer   VARCHAR(255) NULL,
  KEY ix_page_views_viewed_at (viewed_at)
) ENGINE=InnoDB;

INSERT INTO users (id, email, name, balance, is_active, created_at, updated_at)
WITH RECURSIVE seq (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < @users)
SELECT
  n,
  CASE
    WHEN n % 29 = 0 THEN CONCAT('josé.', n, '@exämple-shop', @t, '.de')
    WHEN n % 13 = 0 THEN CONCAT('user', n, '+promo@shop', @t, '.example.com')
    ELSE CONCAT('user', n, '@shop', @t, '.example.com')
  END,
  CASE
    WHEN n % 23 = 0 THEN NULL
    ELSE CONCAT(
      ELT(1 + (n + @t) % 20, 'Alice', 'José', 'Zoë', '王芳', '李伟', 'Søren', 'Renée', 'Ömer', 'Chloé',
          'Mateusz', 'Анна', 'Dmitri', 'Aoife', 'Nguyễn', 'Fatima', '佐藤', 'Björn', 'María', 'Ethan', 'Łukasz'),
      ' ',
      ELT(1 + (n * 7) % 17, 'Smith', 'García', 'Müller', 'O''Brien', '张', 'Dubois', 'Kowalski', 'Nakamura',
          'Petrov', 'Núñez', 'Jensen', 'Rossi', 'Okafor', 'Kim', 'Lefèvre', 'Silva', 'Yılmaz'),
      IF(n % 17 = 0, ' 😀', ''))
  END,
  CASE n
    WHEN 2 THEN 9999999999.99
    WHEN 3 THEN -0.01
    ELSE ROUND(((n * 2654435761 + @t * 101) % 250000 - 50000) / 100, 2)
  END,
  IF(n % 7 = 0, 0, 1),
  TIMESTAMP('2024-01-01 08:00:00') + INTERVAL (n * 3607 + @t * 11) SECOND
    + INTERVAL ((n * 137) % 1000) * 1000 MICROSECOND,
  IF(n % 10 = 0, NULL,
     TIMESTAMP('2024-01-01 08:00:00') + INTERVAL (n * 3607 + @t * 11 + (n * 7919) % 2592000) SECOND
       + INTERVAL ((n * 104729) % 1000000) MICROSECOND)
FROM seq;

INSERT INTO products (sku, title, price, weight_kg, attributes, created_at, update_time)
WITH RECURSIVE seq (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < @products)
SELECT
  CONCAT('S', @t, '-', LPAD(n, 5, '0')),
  CASE
    WHEN n % 19 = 0 THEN NULL
    WHEN n % 11 = 0 THEN CONCAT('Geschenkset "Deluxe" Nr. ', n, CHAR(10),
                                'Zweite Zeile: Tee, Tasse & Löffel', CHAR(9), '— 礼品套装 😀')
    ELSE CONCAT(
      ELT(1 + n % 8, 'Café', 'Übergröße', 'Classic', '经典', 'Eco', 'Crème', 'Smörgås', 'Emoji 😀'),
      ' ',
      ELT(1 + (n * 3) % 7, 'mug', 'hoodie', 'teapot 茶壶', 'notebook', 'sticker pack', 'lamp', 'chaise'),
      ' #', n)
  END,
  ROUND(((n * 7331 + @t * 17) % 50000) / 100 + 0.99, 2),
  IF(n % 9 = 0, NULL, CAST(n AS DOUBLE) / 7 + 0.1),
  CASE
    WHEN n % 10 = 0 THEN NULL
    WHEN n % 13 = 0 THEN JSON_OBJECT()
    ELSE JSON_OBJECT(
      'color', ELT(1 + n % 5, 'red', '红色', 'bleu', 'grün', '😀 yellow'),
      'tags', JSON_ARRAY(ELT(1 + n % 4, 'new', 'sale', 'ökologisch', '限定'), CONCAT('t', n % 6)),
      'dims', JSON_OBJECT('w_cm', 1 + n % 40, 'h_cm', 2 + n % 25, 'd_cm', CAST(n AS DOUBLE) / 4),
      'variants', JSON_ARRAY(
        JSON_OBJECT('size', 'S', 'stock', n % 5, 'barcodes', JSON_ARRAY(CONCAT('400', n), CONCAT('401', n))),
        JSON_OBJECT('size', 'M', 'stock', n % 7, 'labels', JSON_ARRAY('neu', 'nuevo', '新'))),
      'organic', JSON_EXTRACT(IF(n % 2 = 0, 'true', 'false'), '$'),
      'supplier', IF(n % 3 = 0, NULL, CONCAT('Lieferant Nº ', n % 4)),
      'matrix', JSON_ARRAY(JSON_ARRAY(1, 2), JSON_ARRAY(n % 3, 4.5)))
  END,
  TIMESTAMP('2023-06-01 00:00:00') + INTERVAL (n * 86399 + @t * 7) SECOND,
  TIMESTAMP('2023-06-01 00:00:00') + INTERVAL (n * 86399 + @t * 7 + (n * 7331) % 5000000) SECOND
    + INTERVAL ((n * 999331) % 1000000) MICROSECOND
FROM seq;

INSERT INTO orders (id, user_id, sku, quantity, amount, status, note, ordered_on, created_at, updated_at)
WITH RECURSIVE seq (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < @orders),
ts AS (
  SELECT n, TIMESTAMP('2024-02-01 00:00:00') + INTERVAL (n * 1801 + @t * 13) SECOND
              + INTERVAL ((n * 271) % 1000) * 1000 MICROSECOND AS created
  FROM seq
)
SELECT
  n,
  1 + (n * 37) % @users,
  CONCAT('S', @t, '-', LPAD(1 + (n * 31) % @products, 5, '0')),
  1 + (n * 7) % 10,
  IF(n % 50 = 0, -1, 1) * ROUND(((n * 2654435761 + @t * 97) % 9999991) / 10000 + 0.0001, 4),
  ELT(1 + (n * 3) % 4, 'new', 'paid', 'shipped', 'cancelled'),
  CASE
    WHEN n % 9 = 0 THEN 'Bitte an der Tür abgeben'
    WHEN n % 14 = 0 THEN '请放在门口 😀'
    WHEN n % 25 = 0 THEN CONCAT('Gift for "Mom" — it''s a surprise', CHAR(10), 'call first')
    WHEN n % 33 = 0 THEN ''
    ELSE NULL
  END,
  DATE(created),
  created,
  created + INTERVAL ((n * 7919) % 604800) SECOND + INTERVAL ((n * 104723) % 1000000) MICROSECOND
FROM ts;

INSERT INTO page_views (user_id, path, viewed_at, referrer)
WITH RECURSIVE seq (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < @views),
k AS (SELECT n, IF(n % 50 = 0, n - 1, n) AS k FROM seq)
SELECT
  IF(k % 6 = 0, NULL, 1 + (k * 13) % @users),
  ELT(1 + k % 8, '/', CONCAT('/products/S', @t, '-', LPAD(1 + k % @products, 5, '0')), '/cart', '/checkout',
      '/search?q=caf%C3%A9&page=2', '/de/über-uns', '/zh/产品', '/blog/😀-launch'),
  TIMESTAMP('2024-03-01 00:00:00') + INTERVAL (k * 97 + @t * 3) SECOND
    + INTERVAL ((k * 1234) % 1000000) MICROSECOND,
  CASE
    WHEN k % 3 = 0 THEN NULL
    ELSE ELT(1 + k % 4, 'https://www.google.com/', 'https://t.co/abc123', 'https://例子.测试/页面', '')
  END
FROM k;
SQL
}

generate() {
  cat <<SQL
-- generated by scripts/demo-data.sh (DEMO_SCALE=$SCALE)
SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci;
SET time_zone = '+00:00';
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';
-- the server default (1000) would cut the row generators short at DEMO_SCALE > 1
SET SESSION max_recursive_iterations = 4294967295;
SQL
  local line t db u p o v
  for line in "${TENANTS[@]}"; do
    read -r t db u p o v <<<"$line"
    cat <<SQL

-- ---------------------------------------------------------------- $db
DROP DATABASE IF EXISTS \`$db\`;
CREATE DATABASE \`$db\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE \`$db\`;
SET @t = $t, @users = $((u * SCALE)), @products = $((p * SCALE)), @orders = $((o * SCALE)), @views = $((v * SCALE));
SQL
    tenant_sql
  done
}

if [ "${1:-}" = "--print" ]; then
  generate
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--print]" >&2; exit 2; }
[ -n "${MYSQL_PORT:-}" ] || {
  echo "demo-data: error: set MYSQL_PORT to the server to load (its shop1..shop3 are dropped; scripts/demo.sh uses a private one)" >&2
  exit 2
}

MYSQL_CMD=(mariadb --no-defaults --default-character-set=utf8mb4 --protocol=TCP -h"${MYSQL_HOST:-127.0.0.1}"
  -P"$MYSQL_PORT" -u"${MYSQL_USER:-root}")
command -v mariadb >/dev/null 2>&1 || { echo "demo-data: error: no mariadb client (install mariadb-client)" >&2; exit 1; }

t0=$SECONDS
echo "demo-data: loading shop1..shop3 (DEMO_SCALE=$SCALE) into ${MYSQL_HOST:-127.0.0.1}:$MYSQL_PORT" >&2
generate | "${MYSQL_CMD[@]}"

# row counts, one line per tenant
"${MYSQL_CMD[@]}" --table <<'SQL'
SELECT 'shop1' AS db, (SELECT COUNT(*) FROM shop1.users) AS users, (SELECT COUNT(*) FROM shop1.products) AS products,
       (SELECT COUNT(*) FROM shop1.orders) AS orders, (SELECT COUNT(*) FROM shop1.page_views) AS page_views
UNION ALL
SELECT 'shop2', (SELECT COUNT(*) FROM shop2.users), (SELECT COUNT(*) FROM shop2.products),
       (SELECT COUNT(*) FROM shop2.orders), (SELECT COUNT(*) FROM shop2.page_views)
UNION ALL
SELECT 'shop3', (SELECT COUNT(*) FROM shop3.users), (SELECT COUNT(*) FROM shop3.products),
       (SELECT COUNT(*) FROM shop3.orders), (SELECT COUNT(*) FROM shop3.page_views);
SQL
echo "demo-data: done in $((SECONDS - t0)) s" >&2
