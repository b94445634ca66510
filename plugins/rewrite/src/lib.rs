//! rewrite: topic rewriting by ordered rules (every key in `etc/plugins/rewrite.toml`).
//!
//! Rules are evaluated in configuration order. The **first rule whose `source_topic` filter
//! matches** the topic decides: if its regex matches, the topic becomes `dest_topic` with
//! `$1`…`$9` (regex captures), `%c` / `${clientid}` and `%u` / `${username}` substituted; if the
//! regex does not match, the topic is left unchanged and no further rule is tried.
//!
//! It hooks `message.publish` (so wills too), `client.subscribe` and `client.unsubscribe` at the
//! rewrite priority (980, before everything else that looks at topics); the broker strips and
//! restores a `$share/<group>/` prefix, so only the filter inside a share is rewritten. ACL
//! checks run before it, on the topic as the client sent it. A result that is not a valid topic
//! leaves the topic unchanged (the broker logs it).
//!
//! `brokerctl rewrite test <topic> [--client-id ID] [--username U] [--action publish|subscribe]`
//! shows what a topic becomes and which rule decided; `brokerctl rewrite rules` lists the rules.

use plugin_api::*;
use regex::Regex;
use serde::Deserialize;

/// Which packets a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// PUBLISH (and wills).
    Publish,
    /// SUBSCRIBE and UNSUBSCRIBE.
    Subscribe,
    /// Both.
    All,
}

/// One rule as written in etc/plugins/rewrite.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `publish`, `subscribe` or `all`.
    pub action: Action,
    /// Topic filter selecting the topics the rule is about.
    pub source_topic: String,
    /// Regular expression matched against the whole topic.
    pub re: String,
    /// Replacement template.
    pub dest_topic: String,
}

/// etc/plugins/rewrite.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Rules in evaluation order.
    pub rules: Vec<RuleConfig>,
}

/// A checked rule.
#[derive(Debug)]
pub struct Rule {
    /// 1-based position in the config.
    pub number: usize,
    config: RuleConfig,
    re: Regex,
}

impl Rule {
    fn applies_to(&self, action: Action) -> bool {
        self.config.action == Action::All || self.config.action == action
    }

    fn describe(&self) -> String {
        let a = match self.config.action {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::All => "all",
        };
        format!(
            "rule {}: {a} {} {} {}",
            self.number, self.config.source_topic, self.config.re, self.config.dest_topic
        )
    }
}

/// What became of a topic.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'r> {
    /// No rule's filter matched.
    NoRule,
    /// The deciding rule's regex did not match: unchanged.
    Unchanged(&'r str),
    /// Rewritten by the rule.
    Rewritten(String, &'r str),
}

fn valid_filter(f: &str) -> bool {
    if f.is_empty() {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| {
        (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
            && (!l.contains('+') || *l == "+")
    })
}

/// The rule set.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    descriptions: Vec<String>,
}

impl Rules {
    /// Checks every rule; an invalid one fails with a message naming it.
    pub fn new(configs: Vec<RuleConfig>) -> Result<Rules, String> {
        let mut rules = Vec::new();
        for (i, c) in configs.into_iter().enumerate() {
            let number = i + 1;
            if !valid_filter(&c.source_topic) {
                return Err(format!(
                    "rule {number}: source_topic {:?} is not a valid topic filter",
                    c.source_topic
                ));
            }
            let re = Regex::new(&c.re)
                .map_err(|e| format!("rule {number}: invalid regex {:?}: {e}", c.re))?;
            if c.dest_topic.is_empty() {
                return Err(format!("rule {number}: dest_topic is empty"));
            }
            if c.action != Action::Subscribe && c.dest_topic.contains(['+', '#']) {
                return Err(format!(
                    "rule {number}: dest_topic {:?} contains a wildcard, which a published topic may not (use action = \"subscribe\")",
                    c.dest_topic
                ));
            }
            rules.push(Rule {
                number,
                config: c,
                re,
            });
        }
        let descriptions = rules.iter().map(Rule::describe).collect();
        Ok(Rules {
            rules,
            descriptions,
        })
    }

    /// The source filters of the rules that apply to PUBLISH: a topic matching none of them is
    /// never rewritten (the plugin's `message.publish` filter).
    pub fn publish_filters(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| r.applies_to(Action::Publish))
            .map(|r| r.config.source_topic.clone())
            .collect()
    }

    /// Applies the rules to `topic` for `action`.
    pub fn apply(
        &self,
        action: Action,
        topic: &str,
        client_id: &str,
        username: Option<&str>,
    ) -> Outcome<'_> {
        let Some((i, rule)) =
            self.rules.iter().enumerate().find(|(_, r)| {
                r.applies_to(action) && topic_matches(&r.config.source_topic, topic)
            })
        else {
            return Outcome::NoRule;
        };
        let description = self.descriptions[i].as_str();
        let Some(caps) = rule.re.captures(topic) else {
            return Outcome::Unchanged(description);
        };
        let template = &rule.config.dest_topic;
        let needs_username = template.contains("%u") || template.contains("${username}");
        let Some(username) = username.or((!needs_username).then_some("")) else {
            return Outcome::Unchanged(description);
        };
        let mut out = String::with_capacity(template.len() + 16);
        let mut rest = template.as_str();
        while let Some(pos) = rest.find(['$', '%']) {
            out.push_str(&rest[..pos]);
            let tail = &rest[pos..];
            let (text, used): (&str, usize) = if let Some(d) = tail
                .strip_prefix('$')
                .and_then(|t| t.chars().next())
                .filter(|c| ('1'..='9').contains(c))
            {
                let n = d as usize - '0' as usize;
                (caps.get(n).map_or("", |m| m.as_str()), 2)
            } else if tail.starts_with("${clientid}") {
                (client_id, "${clientid}".len())
            } else if tail.starts_with("${username}") {
                (username, "${username}".len())
            } else if tail.starts_with("%c") {
                (client_id, 2)
            } else if tail.starts_with("%u") {
                (username, 2)
            } else {
                (&tail[..1], 1)
            };
            out.push_str(text);
            rest = &tail[used..];
        }
        out.push_str(rest);
        Outcome::Rewritten(out, description)
    }

    /// The rules, one line each.
    pub fn describe(&self) -> String {
        if self.descriptions.is_empty() {
            return "no rules".into();
        }
        self.descriptions.join("\n")
    }
}

/// The plugin.
pub struct Rewrite {
    rules: Rules,
}

impl Plugin for Rewrite {
    const NAME: &'static str = "rewrite";
    const DESCRIPTION: &'static str = "topic rewriting by ordered rules";
    /// Rewrites on the broker's threads; nothing runs on the runtime.
    const RUNTIME_THREADS: usize = 1;

    fn create(_ctx: Context, config: &str) -> Result<Self, PluginError> {
        let config: Config =
            toml::from_str(config).map_err(|e| PluginError::config(e.to_string()))?;
        let rules = Rules::new(config.rules).map_err(PluginError::config)?;
        tracing::info!(rules = rules.rules.len(), "rewrite rules loaded");
        Ok(Rewrite { rules })
    }

    fn registration(&self) -> Registration {
        // Only messages a publish rule could rewrite reach the hook; without publish rules the
        // hook is not registered at all.
        let publish_filters = self.rules.publish_filters();
        let hooks = [
            HookPoint::MESSAGE_PUBLISH,
            HookPoint::CLIENT_SUBSCRIBE,
            HookPoint::CLIENT_UNSUBSCRIBE,
        ]
        .into_iter()
        .filter(|p| *p != HookPoint::MESSAGE_PUBLISH || !publish_filters.is_empty())
        .map(|point| HookSpec {
            point,
            priority: priority::REWRITE,
        })
        .collect::<Vec<_>>();
        Registration {
            hooks: hooks.into(),
            publish_filter: PublishFilter {
                retained_only: false,
                topics: publish_filters.into_iter().map(Into::into).collect(),
            },
            commands: vec![CommandSpec {
                name: "rewrite".into(),
                usage: "rewrite test <topic> [--client-id ID] [--username U] [--action publish|subscribe] | rewrite rules".into(),
            }]
            .into(),
            ..Registration::default()
        }
    }

    fn on_message_publish(&self, message: &MessageView<'_>) -> Flow<MessageEdit> {
        let client_id = message.publisher.map_or("", |p| p.as_str());
        let username = message.username.map(|u| u.as_str()).into_option();
        match self
            .rules
            .apply(Action::Publish, message.topic.as_str(), client_id, username)
        {
            Outcome::Rewritten(topic, _) => Flow::ContinueWith(MessageEdit {
                topic: ROption::RSome(topic.into()),
                ..MessageEdit::default()
            }),
            _ => Flow::Continue,
        }
    }

    fn on_subscribe(&self, _point: HookPoint, request: &SubscribeView<'_>) -> Flow<RString> {
        let client = &request.client;
        let username = client.username.map(|u| u.as_str()).into_option();
        match self.rules.apply(
            Action::Subscribe,
            request.filter.as_str(),
            client.client_id.as_str(),
            username,
        ) {
            Outcome::Rewritten(filter, _) => Flow::ContinueWith(filter.into()),
            _ => Flow::Continue,
        }
    }

    fn command(
        &self,
        args: Vec<String>,
    ) -> impl std::future::Future<Output = Result<String, PluginError>> + Send + 'static {
        let answer = self.answer(&args);
        async move { answer }
    }
}

impl Rewrite {
    fn answer(&self, args: &[String]) -> Result<String, PluginError> {
        let usage = || {
            PluginError::new(ErrorKind::INVALID, "usage: rewrite test <topic> [--client-id ID] [--username U] [--action publish|subscribe] | rewrite rules")
        };
        match args.get(1).map(String::as_str) {
            Some("rules") => Ok(self.rules.describe()),
            Some("test") => {
                let topic = args.get(2).ok_or_else(usage)?;
                let (mut client_id, mut username, mut action) =
                    (String::new(), None, Action::Publish);
                let mut it = args[3..].iter();
                while let Some(a) = it.next() {
                    let v = it.next().ok_or_else(usage)?;
                    match a.as_str() {
                        "--client-id" => client_id = v.clone(),
                        "--username" => username = Some(v.clone()),
                        "--action" => {
                            action = match v.as_str() {
                                "publish" => Action::Publish,
                                "subscribe" => Action::Subscribe,
                                _ => return Err(usage()),
                            }
                        }
                        _ => return Err(usage()),
                    }
                }
                Ok(
                    match self
                        .rules
                        .apply(action, topic, &client_id, username.as_deref())
                    {
                        Outcome::NoRule => format!("{topic} (no rule matched)"),
                        Outcome::Unchanged(rule) => {
                            format!("{topic} (unchanged: the regex of {rule} did not match)")
                        }
                        Outcome::Rewritten(to, rule) => format!("{to} ({rule})"),
                    },
                )
            }
            _ => Err(usage()),
        }
    }
}

plugin_api::export_plugin!(Rewrite);

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: Action, src: &str, re: &str, dest: &str) -> RuleConfig {
        RuleConfig {
            action,
            source_topic: src.into(),
            re: re.into(),
            dest_topic: dest.into(),
        }
    }

    #[test]
    fn first_matching_filter_decides() {
        let r = Rules::new(vec![
            rule(Action::All, "x/#", r"^x/y/(.+)$", "z/y/$1"),
            rule(Action::All, "x/#", r"^x/(.+)$", "never/$1"),
            rule(Action::Publish, "c/+", r"^c/(.+)$", "c/%c/$1/${username}"),
        ])
        .expect("valid");
        assert!(
            matches!(r.apply(Action::Publish, "x/y/1", "", None), Outcome::Rewritten(t, _) if t == "z/y/1")
        );
        assert!(
            matches!(
                r.apply(Action::Publish, "x/q", "", None),
                Outcome::Unchanged(_)
            ),
            "no fall-through"
        );
        assert_eq!(r.apply(Action::Publish, "other", "", None), Outcome::NoRule);
        assert!(
            matches!(r.apply(Action::Publish, "c/t", "dev1", Some("bob")), Outcome::Rewritten(t, _) if t == "c/dev1/t/bob")
        );
        assert!(
            matches!(
                r.apply(Action::Publish, "c/t", "dev1", None),
                Outcome::Unchanged(_)
            ),
            "needs a user name"
        );
        assert_eq!(
            r.apply(Action::Subscribe, "c/t", "dev1", None),
            Outcome::NoRule,
            "publish-only rule"
        );
    }

    #[test]
    fn invalid_rules_are_named() {
        let e = Rules::new(vec![rule(Action::All, "a/#", "(", "b")]).expect_err("bad regex");
        assert!(e.starts_with("rule 1: invalid regex"), "{e}");
        let e = Rules::new(vec![
            rule(Action::All, "a/#", "a", "b"),
            rule(Action::All, "a/#/b", "a", "b"),
        ])
        .expect_err("bad filter");
        assert!(e.starts_with("rule 2: source_topic"), "{e}");
        let e =
            Rules::new(vec![rule(Action::Publish, "a/#", "a", "b/+")]).expect_err("wildcard dest");
        assert!(e.starts_with("rule 1: dest_topic"), "{e}");
        assert!(Rules::new(vec![rule(Action::Subscribe, "a/#", "^a/(.*)$", "b/+/$1")]).is_ok());
    }
}
