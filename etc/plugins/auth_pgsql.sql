-- Tables for the auth_pgsql plugin (EMQ's layout). Create them in the database named by
-- `database` in etc/plugins/auth_pgsql.toml, e.g.:
--   createdb mqtt
--   psql -d mqtt -f etc/plugins/auth_pgsql.sql

-- One row per MQTT user. `password` holds what `password_hash` describes (e.g. sha256:
-- lower-case hex of sha256(salt || password) for "salt,sha256"); `salt` is used by the salted
-- hashes and pbkdf2. `is_superuser` = true skips every ACL check for that user.
CREATE TABLE IF NOT EXISTS mqtt_user (
  id serial PRIMARY KEY,
  username varchar(100) UNIQUE,
  password varchar(200),
  salt varchar(64),
  is_superuser boolean DEFAULT false,
  created timestamp with time zone DEFAULT NULL
);

-- ACL rules, evaluated in `id` order (the default acl_query ends with ORDER BY id); the first
-- row that matches decides.
--   allow     1 allow, 0 deny
--   ipaddr    client address or CIDR block (NULL: any)
--   username  user name, or '$all' for everyone (NULL: any)
--   clientid  client id (NULL: any)
--   access    1 subscribe, 2 publish, 3 both
--   topic     topic filter; %u / %c as a whole level = the user name / client id;
--             'eq <filter>' matches that exact filter only
CREATE TABLE IF NOT EXISTS mqtt_acl (
  id serial PRIMARY KEY,
  allow integer DEFAULT 1,
  ipaddr varchar(60),
  username varchar(100),
  clientid varchar(100),
  access integer NOT NULL,
  topic varchar(200) NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS mqtt_acl_username ON mqtt_acl (username);
CREATE INDEX IF NOT EXISTS mqtt_acl_clientid ON mqtt_acl (clientid);
