-- Tables for the auth_mysql plugin (EMQ's layout). Create them in the database named by
-- `database` in etc/plugins/auth_mysql.toml, e.g.:
--   mariadb -u root -e 'create database if not exists mqtt'
--   mariadb -u root mqtt < etc/plugins/auth_mysql.sql

-- One row per MQTT user. `password` holds what `password_hash` describes (e.g. sha256:
-- lower-case hex of sha256(salt ++ password) for "salt,sha256"); `salt` is used by the salted
-- hashes and pbkdf2. `is_superuser` = 1 skips every ACL check for that user.
CREATE TABLE IF NOT EXISTS mqtt_user (
  id int unsigned NOT NULL AUTO_INCREMENT,
  username varchar(100) DEFAULT NULL,
  password varchar(200) DEFAULT NULL,
  salt varchar(64) DEFAULT NULL,
  is_superuser tinyint(1) DEFAULT 0,
  created datetime DEFAULT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY mqtt_username (username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

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
  id int unsigned NOT NULL AUTO_INCREMENT,
  allow int DEFAULT 1,
  ipaddr varchar(60) DEFAULT NULL,
  username varchar(100) DEFAULT NULL,
  clientid varchar(100) DEFAULT NULL,
  access int NOT NULL,
  topic varchar(200) NOT NULL DEFAULT '',
  PRIMARY KEY (id),
  KEY mqtt_acl_username (username),
  KEY mqtt_acl_clientid (clientid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
