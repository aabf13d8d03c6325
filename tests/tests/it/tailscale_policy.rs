//! The Tailscale policy in `deploy/tailscale/policy.hujson` is the outer wall around the
//! backup receiver on heim-nas (DESIGN.md: "Tailscale's ACL is the outer wall; the
//! receiver's own check is the inner one"). This test reads that file as HuJSON, evaluates
//! its `acls` (and `grants`, should any appear) with a small model of Tailscale's rule
//! semantics, and checks:
//!
//! 1. every `accept` and `deny` in the file's own `tests` section (the same assertions the
//!    admin console runs when the policy is saved);
//! 2. the properties the backup relies on, directly: `tag:prod-vps` reaches
//!    `tag:heim-nas:7443`; the backup operators (`group:backup-operators`) reach port 22
//!    of `tag:heim-nas` and of `tag:prod-vps`, for the restore through their workstation
//!    (docs/adr/0005); nothing else reaches any port of `tag:heim-nas` (checked over all
//!    65535 ports for every tag, group and user the file names, plus `autogroup:member`
//!    as a member who is not an operator); and `tag:heim-nas` reaches no port of
//!    `tag:prod-vps`;
//! 3. that the evaluator does fail on policies that open the NAS, so a green run means
//!    something.
//!
//! The evaluator is three-valued. Where it cannot know the answer from the file alone (a
//! source given as an IP, CIDR or host alias, a role autogroup such as `autogroup:admin`,
//! a posture condition) it says "maybe". An `accept` needs a definite yes and a `deny` a
//! definite no, so a rule it cannot judge fails a deny check instead of slipping through.
//!
//! HuJSON is read by a small standardiser below (comments to spaces, trailing commas
//! dropped, then serde_json), which accepts exactly HuJSON and not the wider JSON5.

use std::collections::BTreeMap;

use serde_json::Value;

const POLICY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/tailscale/policy.hujson"
);
const NAS: &str = "tag:heim-nas";
const VPS: &str = "tag:prod-vps";
const RECEIVER_PORT: u16 = 7443;
/// Ports the file's own tests must show closed from the VPS (SSH, NAS web UI, Postgres, MinIO).
const VPS_DENIED_PORTS: [u16; 5] = [22, 80, 443, 5432, 9000];
/// Who may restore: their devices reach SSH on the NAS and on the VPS (docs/adr/0005).
const OPERATORS: &str = "group:backup-operators";
const SSH_PORT: u16 = 22;

// ---------------------------------------------------------------- HuJSON

/// HuJSON -> standard JSON. Comments become spaces (newlines kept, so serde_json's line and
/// column still point into the original file) and trailing commas are dropped.
fn hujson_to_json(text: &str) -> Result<String, String> {
    let src = text.as_bytes();
    let mut out = src.to_vec();
    let mut i = 0;
    let mut in_string = false;
    while i < src.len() {
        let b = src[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'/' if src.get(i + 1) == Some(&b'/') => {
                while i < src.len() && src[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            b'/' if src.get(i + 1) == Some(&b'*') => {
                let start = i;
                i += 2;
                loop {
                    if i + 1 >= src.len() {
                        return Err(format!("unterminated /* comment starting at byte {start}"));
                    }
                    if src[i] == b'*' && src[i + 1] == b'/' {
                        i += 2;
                        break;
                    }
                    i += 1;
                }
                for o in &mut out[start..i] {
                    if *o != b'\n' {
                        *o = b' ';
                    }
                }
            }
            _ => i += 1,
        }
    }
    if in_string {
        return Err("unterminated string".into());
    }

    // Trailing commas: a comma whose next non-blank byte closes an array or object.
    let mut in_string = false;
    let mut i = 0;
    while i < out.len() {
        let b = out[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b',' {
            let next = out[i + 1..]
                .iter()
                .copied()
                .find(|c| !c.is_ascii_whitespace());
            if matches!(next, Some(b']') | Some(b'}')) {
                out[i] = b' ';
            }
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- three-valued logic

/// Kleene logic: `and` is the minimum, `or` the maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tri {
    No,
    Maybe,
    Yes,
}

impl Tri {
    fn and(self, other: Tri) -> Tri {
        self.min(other)
    }
    fn or(self, other: Tri) -> Tri {
        self.max(other)
    }
    fn any(items: impl IntoIterator<Item = Tri>) -> Tri {
        items.into_iter().fold(Tri::No, Tri::or)
    }
    fn from_bool(b: bool) -> Tri {
        if b {
            Tri::Yes
        } else {
            Tri::No
        }
    }
}

// ---------------------------------------------------------------- ports and destinations

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ports {
    Any,
    /// Inclusive ranges; a single port is `(p, p)`.
    Ranges(Vec<(u16, u16)>),
}

impl Ports {
    /// `*`, a port, a range `a-b`, or a comma list of ports and ranges.
    fn parse(s: &str) -> Result<Ports, String> {
        if s == "*" {
            return Ok(Ports::Any);
        }
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let port = |p: &str| -> Result<u16, String> {
                match p.trim().parse::<u16>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!("bad port {part:?} in {s:?}")),
                }
            };
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err(format!("empty port range {part:?} in {s:?}"));
            }
            ranges.push((lo, hi));
        }
        Ok(Ports::Ranges(ranges))
    }

    fn contains(&self, port: u16) -> bool {
        match self {
            Ports::Any => true,
            Ports::Ranges(r) => r.iter().any(|&(lo, hi)| (lo..=hi).contains(&port)),
        }
    }
}

/// Splits `host:ports` at the last colon (hosts such as `tag:x` contain colons themselves).
fn split_host_port(entry: &str) -> Result<(&str, &str), String> {
    match entry.rsplit_once(':') {
        Some((host, ports)) if !host.is_empty() && !ports.is_empty() => Ok((host, ports)),
        _ => Err(format!("{entry:?} is not of the form host:ports")),
    }
}

#[derive(Debug, Clone)]
struct Dest {
    host: String,
    ports: Ports,
}

impl Dest {
    fn parse(entry: &str) -> Result<Dest, String> {
        let (host, ports) = split_host_port(entry)?;
        Ok(Dest {
            host: host.to_string(),
            ports: Ports::parse(ports).map_err(|e| format!("destination {entry:?}: {e}"))?,
        })
    }
}

// ---------------------------------------------------------------- names

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    Wildcard,
    Tag,
    Group,
    Autogroup(&'a str),
    User,
    /// An IP, a CIDR or a `hosts` alias: the file alone cannot say which device it is.
    Address,
}

/// `autogroup:members` is the older spelling of `autogroup:member`.
fn canonical(name: &str) -> &str {
    if name == "autogroup:members" {
        "autogroup:member"
    } else {
        name
    }
}

fn kind(name: &str) -> Kind<'_> {
    if name == "*" {
        Kind::Wildcard
    } else if name.starts_with("tag:") {
        Kind::Tag
    } else if name.starts_with("group:") {
        Kind::Group
    } else if let Some(a) = name.strip_prefix("autogroup:") {
        Kind::Autogroup(a)
    } else if name.contains('@') {
        Kind::User
    } else {
        Kind::Address
    }
}

// ---------------------------------------------------------------- the policy

#[derive(Debug, Clone)]
struct Rule {
    /// Where the rule came from, for messages: `acls[0]`, `grants[2]`.
    origin: String,
    src: Vec<String>,
    dst: Vec<Dest>,
    /// `None`: every protocol.
    proto: Option<String>,
    /// Narrowed by something this model does not evaluate (`srcPosture`, `via`): it can
    /// open access but never proves it.
    conditional: bool,
}

#[derive(Debug, Clone)]
struct PolicyTest {
    src: String,
    proto: Option<String>,
    accept: Vec<String>,
    deny: Vec<String>,
}

#[derive(Debug, Clone)]
struct Policy {
    groups: BTreeMap<String, Vec<String>>,
    tag_owners: BTreeMap<String, Vec<String>>,
    rules: Vec<Rule>,
    tests: Vec<PolicyTest>,
    /// `dst` lists of the `ssh` rules.
    ssh_dst: Vec<Vec<String>>,
}

fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>, String> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{what}: {i} is not a string"))
            })
            .collect(),
        Some(other) => Err(format!("{what}: expected a list of strings, found {other}")),
    }
}

fn string_map(v: Option<&Value>, what: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    match v {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), strings(Some(v), &format!("{what}.{k}"))?)))
            .collect(),
        Some(other) => Err(format!("{what}: expected an object, found {other}")),
    }
}

fn objects<'a>(
    v: Option<&'a Value>,
    what: &str,
) -> Result<Vec<&'a serde_json::Map<String, Value>>, String> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_object()
                    .ok_or_else(|| format!("{what}[{i}] is not an object"))
            })
            .collect(),
        Some(other) => Err(format!("{what}: expected a list, found {other}")),
    }
}

fn opt_string(v: Option<&Value>, what: &str) -> Result<Option<String>, String> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{what}: expected a string, found {other}")),
    }
}

/// Normalised protocol name; Tailscale accepts names and IANA numbers.
fn proto_name(p: &str) -> String {
    match p.to_ascii_lowercase().as_str() {
        "6" => "tcp".into(),
        "17" => "udp".into(),
        "1" => "icmp".into(),
        other => other.into(),
    }
}

impl Policy {
    fn load() -> Policy {
        let text = std::fs::read_to_string(POLICY_FILE)
            .unwrap_or_else(|e| panic!("reading {POLICY_FILE}: {e}"));
        Policy::parse(&text).unwrap_or_else(|e| panic!("{POLICY_FILE}: {e}"))
    }

    fn parse(hujson: &str) -> Result<Policy, String> {
        let json = hujson_to_json(hujson)?;
        let value: Value =
            serde_json::from_str(&json).map_err(|e| format!("not valid HuJSON: {e}"))?;
        let top = value.as_object().ok_or("the policy must be an object")?;

        let groups = string_map(top.get("groups"), "groups")?;
        let tag_owners = string_map(top.get("tagOwners"), "tagOwners")?;
        let mut rules = Vec::new();

        for (i, acl) in objects(top.get("acls"), "acls")?.into_iter().enumerate() {
            let origin = format!("acls[{i}]");
            let action = opt_string(acl.get("action"), &origin)?;
            if action.as_deref() != Some("accept") {
                return Err(format!(
                    "{origin}: action must be \"accept\", found {action:?}"
                ));
            }
            // `users`/`ports` are the legacy names of `src`/`dst`.
            let src = strings(
                acl.get("src").or(acl.get("users")),
                &format!("{origin}.src"),
            )?;
            let dst = strings(
                acl.get("dst").or(acl.get("ports")),
                &format!("{origin}.dst"),
            )?
            .iter()
            .map(|d| Dest::parse(d).map_err(|e| format!("{origin}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
            if src.is_empty() || dst.is_empty() {
                return Err(format!("{origin}: needs both src and dst"));
            }
            rules.push(Rule {
                proto: opt_string(acl.get("proto"), &format!("{origin}.proto"))?,
                conditional: acl.contains_key("srcPosture"),
                origin,
                src,
                dst,
            });
        }

        for (i, grant) in objects(top.get("grants"), "grants")?
            .into_iter()
            .enumerate()
        {
            let origin = format!("grants[{i}]");
            let src = strings(grant.get("src"), &format!("{origin}.src"))?;
            let hosts = strings(grant.get("dst"), &format!("{origin}.dst"))?;
            let conditional = grant.contains_key("srcPosture") || grant.contains_key("via");
            // A grant without `ip` only carries application capabilities: no network access.
            for ip in strings(grant.get("ip"), &format!("{origin}.ip"))? {
                let (proto, ports) = match ip.split_once(':') {
                    Some((proto, ports)) => (Some(proto.to_string()), ports),
                    None if ip == "*" => (None, "*"),
                    None => (None, ip.as_str()),
                };
                let ports = Ports::parse(ports).map_err(|e| format!("{origin}.ip: {e}"))?;
                rules.push(Rule {
                    origin: origin.clone(),
                    src: src.clone(),
                    dst: hosts
                        .iter()
                        .map(|h| Dest {
                            host: h.clone(),
                            ports: ports.clone(),
                        })
                        .collect(),
                    proto,
                    conditional,
                });
            }
        }

        let mut tests = Vec::new();
        for (i, t) in objects(top.get("tests"), "tests")?.into_iter().enumerate() {
            let what = format!("tests[{i}]");
            tests.push(PolicyTest {
                src: opt_string(t.get("src"), &what)?.ok_or_else(|| format!("{what}: no src"))?,
                proto: opt_string(t.get("proto"), &format!("{what}.proto"))?,
                accept: strings(t.get("accept"), &format!("{what}.accept"))?,
                deny: strings(t.get("deny"), &format!("{what}.deny"))?,
            });
        }

        let ssh_dst = objects(top.get("ssh"), "ssh")?
            .into_iter()
            .enumerate()
            .map(|(i, r)| strings(r.get("dst"), &format!("ssh[{i}].dst")))
            .collect::<Result<Vec<_>, _>>()?;

        let policy = Policy {
            groups,
            tag_owners,
            rules,
            tests,
            ssh_dst,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// What Tailscale itself refuses: undefined tags and groups, groups of non-users,
    /// malformed test destinations.
    fn validate(&self) -> Result<(), String> {
        for (group, members) in &self.groups {
            if let Some(m) = members.iter().find(|m| kind(m) != Kind::User) {
                return Err(format!(
                    "groups.{group}: {m:?} is not a user (groups hold users only)"
                ));
            }
        }
        let mut names: Vec<(String, &str)> = Vec::new();
        for r in &self.rules {
            names.extend(
                r.src
                    .iter()
                    .map(|s| (format!("{}.src", r.origin), s.as_str())),
            );
            names.extend(
                r.dst
                    .iter()
                    .map(|d| (format!("{}.dst", r.origin), d.host.as_str())),
            );
        }
        for (i, t) in self.tests.iter().enumerate() {
            names.push((format!("tests[{i}].src"), t.src.as_str()));
            for target in t.accept.iter().chain(&t.deny) {
                let (host, port) = split_host_port(target)?;
                port.parse::<u16>()
                    .map_err(|_| format!("tests[{i}]: {target:?} must name a single port"))?;
                names.push((format!("tests[{i}]"), host));
            }
        }
        for (where_, name) in names {
            match kind(name) {
                Kind::Tag if !self.tag_owners.contains_key(name) => {
                    return Err(format!("{where_}: {name} is not defined in tagOwners"))
                }
                Kind::Group if !self.groups.contains_key(name) => {
                    return Err(format!("{where_}: {name} is not defined in groups"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Does the rule source `entry` cover the subject `who`?
    fn src_matches(&self, entry: &str, who: &str) -> Tri {
        let (entry, who) = (canonical(entry), canonical(who));
        if entry == "*" || entry == "autogroup:danger-all" || entry == who {
            return Tri::Yes;
        }
        if kind(who) == Kind::Group {
            // A group as subject: what some member of it may do.
            let members = self.groups.get(who).map(Vec::as_slice).unwrap_or_default();
            return Tri::any(members.iter().map(|m| self.src_matches(entry, m)));
        }
        let any_member = who == "autogroup:member";
        match (kind(entry), kind(who)) {
            (_, Kind::Address) | (Kind::Address, _) => Tri::Maybe,
            (Kind::Tag, _) => Tri::No,
            (Kind::User, _) => {
                if any_member {
                    Tri::Maybe
                } else {
                    Tri::No
                }
            }
            (Kind::Group, Kind::User) => Tri::from_bool(
                self.groups
                    .get(entry)
                    .is_some_and(|m| m.iter().any(|u| u == who)),
            ),
            (Kind::Group, _) if any_member => {
                if self.groups.get(entry).is_some_and(|m| !m.is_empty()) {
                    Tri::Maybe
                } else {
                    Tri::No
                }
            }
            (Kind::Group, _) => Tri::No,
            (Kind::Autogroup("member"), Kind::User) => Tri::Yes,
            (Kind::Autogroup("member"), Kind::Tag) => Tri::No,
            (Kind::Autogroup("tagged"), Kind::Tag) => Tri::Yes,
            (Kind::Autogroup("tagged"), Kind::User) => Tri::No,
            (Kind::Autogroup("tagged"), _) if any_member => Tri::No,
            // Role and sharing autogroups (admin, owner, shared, ...) hold users, never tags.
            (Kind::Autogroup(_), Kind::Tag) => Tri::No,
            _ => Tri::Maybe,
        }
    }

    /// Does the rule destination host `entry` cover the device(s) named `target`?
    fn host_matches(entry: &str, target: &str) -> Tri {
        let (entry, target) = (canonical(entry), canonical(target));
        if entry == "*" || entry == target {
            return Tri::Yes;
        }
        if kind(target) != Kind::Tag {
            return Tri::Maybe;
        }
        match kind(entry) {
            Kind::Tag => Tri::No,
            Kind::Autogroup("tagged") => Tri::Yes,
            // Devices owned by users, or the internet through an exit node: never a tagged device.
            Kind::Autogroup("self" | "member" | "internet") | Kind::Group | Kind::User => Tri::No,
            _ => Tri::Maybe,
        }
    }

    /// A test without `proto` asks about TCP; `Some("*")` asks about any protocol.
    fn proto_matches(rule: Option<&str>, test: Option<&str>) -> Tri {
        match (rule, test) {
            (None, _) | (Some(_), Some("*")) => Tri::Yes,
            (Some(r), t) => Tri::from_bool(proto_name(r) == proto_name(t.unwrap_or("tcp"))),
        }
    }

    /// May `src` open a connection to `host` on `port`? Default deny.
    fn evaluate_at(&self, src: &str, host: &str, port: u16, proto: Option<&str>) -> Tri {
        Tri::any(self.rules.iter().map(|r| {
            let s = Tri::any(r.src.iter().map(|e| self.src_matches(e, src)));
            let d = Tri::any(
                r.dst
                    .iter()
                    .filter(|d| d.ports.contains(port))
                    .map(|d| Policy::host_matches(&d.host, host)),
            );
            let m = s
                .and(d)
                .and(Policy::proto_matches(r.proto.as_deref(), proto));
            if r.conditional {
                m.and(Tri::Maybe)
            } else {
                m
            }
        }))
    }

    /// `target` is `host:port`, as in a Tailscale test.
    fn evaluate(&self, src: &str, target: &str, proto: Option<&str>) -> Result<Tri, String> {
        let (host, port) = split_host_port(target)?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{target:?} must name a single port"))?;
        Ok(self.evaluate_at(src, host, port, proto))
    }

    /// The file's own `tests` section, evaluated against its own rules.
    fn run_file_tests(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for t in &self.tests {
            for (targets, want) in [(&t.accept, Tri::Yes), (&t.deny, Tri::No)] {
                for target in targets {
                    match self.evaluate(&t.src, target, t.proto.as_deref()) {
                        Ok(got) if got == want => {}
                        Ok(got) => failures.push(format!(
                            "tests: from {} to {target}: want {}, the acls give {got:?}",
                            t.src,
                            if want == Tri::Yes { "accept" } else { "deny" },
                        )),
                        Err(e) => failures.push(format!("tests: from {}: {e}", t.src)),
                    }
                }
            }
        }
        failures
    }

    /// Is `who` the operators' group or one of its members?
    fn is_operator(&self, who: &str) -> bool {
        who == OPERATORS
            || self
                .groups
                .get(OPERATORS)
                .is_some_and(|m| m.iter().any(|u| u == who))
    }

    /// The same policy with an empty operators' group: what someone who is not an
    /// operator may do (`autogroup:member` then means "a member who is no operator").
    fn without_operators(&self) -> Policy {
        let mut p = self.clone();
        if let Some(m) = p.groups.get_mut(OPERATORS) {
            m.clear();
        }
        p
    }

    /// What the backup relies on, checked directly rather than through the file's tests.
    fn required_properties(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let outsiders = self.without_operators();
        let mut expect = |src: &str, port: u16, want: Tri| {
            // Accepts are about TCP (the receiver speaks gRPC over TCP); denials about any protocol.
            let proto = if want == Tri::Yes { None } else { Some("*") };
            let got = self.evaluate_at(src, NAS, port, proto);
            if got != want {
                failures.push(format!(
                    "from {src} to {NAS}:{port}: want {want:?}, the acls give {got:?}"
                ));
            }
        };
        expect(VPS, RECEIVER_PORT, Tri::Yes);
        for port in [22, 5432] {
            expect(VPS, port, Tri::No);
        }
        for src in ["autogroup:member", "tag:other"] {
            expect(src, RECEIVER_PORT, Tri::No);
        }

        // The restore path: every operator reaches SSH on both hosts (TCP).
        let mut operators: Vec<String> = vec![OPERATORS.into()];
        operators.extend(self.groups.get(OPERATORS).into_iter().flatten().cloned());
        if operators.len() < 2 {
            failures.push(format!(
                "groups: {OPERATORS} has no members; nobody could run the restore"
            ));
        }
        for who in &operators {
            for host in [NAS, VPS] {
                let got = self.evaluate_at(who, host, SSH_PORT, None);
                if got != Tri::Yes {
                    failures.push(format!(
                        "from {who} to {host}:{SSH_PORT}: want Yes (the restore), the acls give {got:?}"
                    ));
                }
            }
        }

        // The NAS reaches nothing of production, on any port or protocol.
        let open: Vec<u16> = (1..=u16::MAX)
            .filter(|&p| self.evaluate_at(NAS, VPS, p, Some("*")) != Tri::No)
            .collect();
        if !open.is_empty() {
            failures.push(format!(
                "{NAS} is not denied {} port(s) of {VPS}, e.g. {VPS}:{}",
                open.len(),
                open[0]
            ));
        }

        // Exhaustively: no port of the NAS, in any protocol, is open to anyone but the
        // VPS's 7443 and the operators' 22 (TCP).
        let mut subjects: Vec<String> = vec![
            VPS.into(),
            NAS.into(),
            "tag:other".into(),
            "autogroup:member".into(),
            "alice@example.com".into(),
            OPERATORS.into(),
        ];
        subjects.extend(self.tag_owners.keys().cloned());
        subjects.extend(self.groups.keys().cloned());
        subjects.extend(self.groups.values().flatten().cloned());
        subjects.extend(
            self.tag_owners
                .values()
                .flatten()
                .filter(|o| kind(o) == Kind::User)
                .cloned(),
        );
        subjects.extend(self.tests.iter().map(|t| t.src.clone()));
        subjects.sort();
        subjects.dedup();
        for who in &subjects {
            let operator = self.is_operator(who);
            let policy = if operator { self } else { &outsiders };
            let open: Vec<(u16, Tri)> = (1..=u16::MAX)
                .filter(|&p| !(who == VPS && p == RECEIVER_PORT))
                .map(|p| {
                    // The operators' SSH is allowed over TCP only.
                    let proto = if operator && p == SSH_PORT {
                        Some("udp")
                    } else {
                        Some("*")
                    };
                    (p, policy.evaluate_at(who, NAS, p, proto))
                })
                .filter(|&(_, t)| t != Tri::No)
                .collect();
            if !open.is_empty() {
                let sample: Vec<String> = open
                    .iter()
                    .take(8)
                    .map(|(p, t)| format!("{NAS}:{p} ({t:?})"))
                    .collect();
                failures.push(format!(
                    "{who} is not denied {} port(s) of {NAS}, e.g. {}",
                    open.len(),
                    sample.join(", ")
                ));
            }
        }

        // The admin console enforces the file's tests on every save; make sure the
        // essential ones are among them.
        let vps_test = self.tests.iter().find(|t| {
            t.src == VPS
                && t.accept
                    .iter()
                    .any(|a| a == &format!("{NAS}:{RECEIVER_PORT}"))
        });
        match vps_test {
            None => failures.push(format!(
                "tests: no test from {VPS} accepts {NAS}:{RECEIVER_PORT}"
            )),
            Some(t) => {
                for port in VPS_DENIED_PORTS {
                    let target = format!("{NAS}:{port}");
                    if !self
                        .tests
                        .iter()
                        .any(|t2| t2.src == t.src && t2.deny.contains(&target))
                    {
                        failures.push(format!("tests: no test from {VPS} denies {target}"));
                    }
                }
            }
        }
        if !self
            .tests
            .iter()
            .any(|t| t.src != VPS && t.deny.contains(&format!("{NAS}:{RECEIVER_PORT}")))
        {
            failures.push(format!(
                "tests: no test shows another source denied {NAS}:{RECEIVER_PORT}"
            ));
        }
        if !self
            .tests
            .iter()
            .any(|t| t.src == NAS && t.deny.contains(&format!("{VPS}:{SSH_PORT}")))
        {
            failures.push(format!("tests: no test from {NAS} denies {VPS}:{SSH_PORT}"));
        }
        let restore = [format!("{NAS}:{SSH_PORT}"), format!("{VPS}:{SSH_PORT}")];
        if !self
            .tests
            .iter()
            .any(|t| self.is_operator(&t.src) && restore.iter().all(|r| t.accept.contains(r)))
        {
            failures.push(format!(
                "tests: no test from a member of {OPERATORS} accepts {}",
                restore.join(" and ")
            ));
        }

        // Tailscale SSH is its own door.
        for (i, dst) in self.ssh_dst.iter().enumerate() {
            if let Some(d) = dst.iter().find(|d| Policy::host_matches(d, NAS) != Tri::No) {
                failures.push(format!("ssh[{i}]: destination {d:?} may include {NAS}"));
            }
        }
        failures
    }

    fn all_failures(&self) -> Vec<String> {
        let mut f = self.run_file_tests();
        f.extend(self.required_properties());
        f
    }
}

fn report(failures: &[String]) -> String {
    failures.iter().map(|f| format!("  - {f}\n")).collect()
}

// ---------------------------------------------------------------- the file itself

#[test]
fn policy_file_tests_pass_against_its_own_acls() {
    let policy = Policy::load();
    assert!(
        !policy.tests.is_empty(),
        "{POLICY_FILE} has no tests section"
    );
    let failures = policy.run_file_tests();
    assert!(failures.is_empty(), "{POLICY_FILE}:\n{}", report(&failures));
}

#[test]
fn only_the_vps_reaches_the_nas_and_only_on_the_receiver_port() {
    let policy = Policy::load();
    assert_eq!(
        policy.evaluate(VPS, "tag:heim-nas:7443", None),
        Ok(Tri::Yes)
    );
    assert_eq!(policy.evaluate(VPS, "tag:heim-nas:22", None), Ok(Tri::No));
    assert_eq!(policy.evaluate(VPS, "tag:heim-nas:5432", None), Ok(Tri::No));
    assert_eq!(
        policy.evaluate("autogroup:member", "tag:heim-nas:7443", None),
        Ok(Tri::No)
    );
    assert_eq!(
        policy.evaluate("tag:other", "tag:heim-nas:7443", None),
        Ok(Tri::No)
    );
    assert_eq!(
        policy.evaluate("alice@example.com", "tag:heim-nas:7443", None),
        Ok(Tri::No)
    );
    let failures = policy.required_properties();
    assert!(failures.is_empty(), "{POLICY_FILE}:\n{}", report(&failures));
}

#[test]
fn policy_file_defines_both_tags_and_two_rules_reaching_the_nas() {
    let policy = Policy::load();
    for tag in [VPS, NAS] {
        assert!(policy.tag_owners.contains_key(tag), "tagOwners lacks {tag}");
        assert!(
            policy.tag_owners[tag]
                .iter()
                .all(|o| !o.starts_with("tag:")),
            "{tag} is owned by a tag; then any machine with that tag could make itself {tag}"
        );
    }
    let reaching: Vec<&Rule> = policy
        .rules
        .iter()
        .filter(|r| {
            r.dst
                .iter()
                .any(|d| Policy::host_matches(&d.host, NAS) != Tri::No)
        })
        .collect();
    assert_eq!(reaching.len(), 2, "rules reaching {NAS}: {reaching:#?}");
    // The nightly backup: the VPS to the receiver's port, nothing else.
    let r = reaching[0];
    assert_eq!(r.src, [VPS]);
    assert_eq!(r.dst.len(), 1);
    assert_eq!(r.dst[0].host, NAS);
    assert_eq!(
        r.dst[0].ports,
        Ports::Ranges(vec![(RECEIVER_PORT, RECEIVER_PORT)])
    );
    // The restore: the operators' devices to SSH on the NAS and on the VPS, over TCP.
    let r = reaching[1];
    assert_eq!(r.src, [OPERATORS]);
    assert_eq!(r.proto.as_deref(), Some("tcp"));
    let hosts: Vec<(&str, &Ports)> = r.dst.iter().map(|d| (d.host.as_str(), &d.ports)).collect();
    let ssh = Ports::Ranges(vec![(SSH_PORT, SSH_PORT)]);
    assert_eq!(hosts, [(NAS, &ssh), (VPS, &ssh)]);
    assert!(
        !policy.groups[OPERATORS].is_empty(),
        "{OPERATORS} has no members"
    );
}

// ---------------------------------------------------------------- the evaluator can fail

const TAGS: &str = r#""tagOwners": {
        "tag:prod-vps": ["autogroup:admin"],
        "tag:heim-nas": ["autogroup:admin"],
        "tag:other": ["autogroup:admin"],
    },"#;

const VPS_TESTS: &str = r#""tests": [
        {"src": "tag:prod-vps", "accept": ["tag:heim-nas:7443"],
         "deny": ["tag:heim-nas:22", "tag:heim-nas:80", "tag:heim-nas:443", "tag:heim-nas:5432", "tag:heim-nas:9000"]},
        {"src": "tag:other", "deny": ["tag:heim-nas:7443"]},
        {"src": "operator@example.com", "accept": ["tag:heim-nas:22", "tag:prod-vps:22"]},
        {"src": "tag:heim-nas", "deny": ["tag:prod-vps:22"]},
    ],"#;

/// The operators and their restore rule, as in the real file.
const OPERATORS_GROUP: &str = r#""groups": {"group:backup-operators": ["operator@example.com"]},"#;
const OPERATORS_RULE: &str = r#"{"action": "accept", "src": ["group:backup-operators"], "proto": "tcp", "dst": ["tag:heim-nas:22", "tag:prod-vps:22"]},"#;

/// A policy with the operators' group and rule, `acls`, and the essential tests.
fn policy_with_acls(acls: &str) -> Policy {
    let text = format!(
        "{{ {OPERATORS_GROUP} {TAGS} \"acls\": [ {OPERATORS_RULE} {acls} ], {VPS_TESTS} }}"
    );
    Policy::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn assert_mentions(failures: &[String], needles: &[&str]) {
    for needle in needles {
        assert!(
            failures.iter().any(|f| f.contains(needle)),
            "expected a failure mentioning {needle:?}, got:\n{}",
            report(failures)
        );
    }
}

#[test]
fn all_ports_of_the_nas_for_the_vps_fails_the_deny_assertions() {
    let policy = policy_with_acls(
        r#"{"action": "accept", "src": ["tag:prod-vps"], "dst": ["tag:heim-nas:*"]}"#,
    );
    assert_eq!(
        policy.evaluate(VPS, "tag:heim-nas:7443", None),
        Ok(Tri::Yes)
    );
    assert_eq!(policy.evaluate(VPS, "tag:heim-nas:22", None), Ok(Tri::Yes));
    assert_eq!(
        policy.evaluate(VPS, "tag:heim-nas:5432", None),
        Ok(Tri::Yes)
    );

    let file_tests = policy.run_file_tests();
    assert_mentions(
        &file_tests,
        &["tag:heim-nas:22", "tag:heim-nas:5432", "tag:heim-nas:9000"],
    );
    let direct = policy.required_properties();
    assert_mentions(
        &direct,
        &[
            "to tag:heim-nas:22:",
            "to tag:heim-nas:5432:",
            "tag:prod-vps is not denied 65534 port(s)",
        ],
    );
}

#[test]
fn the_real_file_with_a_wildcard_port_fails() {
    let text = std::fs::read_to_string(POLICY_FILE).unwrap();
    let needle = r#""dst": ["tag:heim-nas:7443"]"#;
    assert!(
        text.contains(needle),
        "{POLICY_FILE} no longer contains {needle}"
    );
    let policy = Policy::parse(&text.replace(needle, r#""dst": ["tag:heim-nas:*"]"#)).unwrap();
    let failures = policy.all_failures();
    assert_mentions(&failures, &["tag:heim-nas:22", "tag:heim-nas:5432"]);
}

#[test]
fn access_for_anyone_else_fails() {
    let vps = r#"{"action": "accept", "src": ["tag:prod-vps"], "dst": ["tag:heim-nas:7443"]},"#;
    assert!(
        policy_with_acls(vps).all_failures().is_empty(),
        "{}",
        report(&policy_with_acls(vps).all_failures())
    );

    // Tailscale's default allow-all policy.
    let p = policy_with_acls(&format!(
        r#"{vps} {{"action": "accept", "src": ["*"], "dst": ["*:*"]}}"#
    ));
    assert_mentions(
        &p.all_failures(),
        &[
            "from tag:other to tag:heim-nas:7443",
            "autogroup:member is not denied",
        ],
    );

    // Every member, on the receiver port only.
    let p = policy_with_acls(&format!(
        r#"{vps} {{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:heim-nas:7443"]}}"#
    ));
    assert_eq!(
        p.evaluate("alice@example.com", "tag:heim-nas:7443", None),
        Ok(Tri::Yes)
    );
    assert_mentions(
        &p.required_properties(),
        &["from autogroup:member to tag:heim-nas:7443"],
    );

    // Every tagged machine, by way of autogroup:tagged on either side.
    let p = policy_with_acls(&format!(
        r#"{vps} {{"action": "accept", "src": ["autogroup:tagged"], "dst": ["autogroup:tagged:443"]}}"#
    ));
    assert_mentions(
        &p.all_failures(),
        &["tag:other is not denied 1 port(s)", "tag:heim-nas:443"],
    );

    // A group that names a user.
    let p = Policy::parse(&format!(
        r#"{{ "groups": {{"group:family": ["alice@example.com"]}}, {TAGS}
            "acls": [ {vps} {{"action": "accept", "src": ["group:family"], "dst": ["tag:heim-nas:22,80,8000-8100"]}} ], {VPS_TESTS} }}"#
    ))
    .unwrap();
    assert_eq!(
        p.evaluate("alice@example.com", "tag:heim-nas:8050", None),
        Ok(Tri::Yes)
    );
    assert_eq!(
        p.evaluate("alice@example.com", "tag:heim-nas:8101", None),
        Ok(Tri::No)
    );
    assert_eq!(
        p.evaluate("bob@example.com", "tag:heim-nas:22", None),
        Ok(Tri::No)
    );
    assert_mentions(
        &p.required_properties(),
        &[
            "group:family is not denied 103 port(s)",
            "alice@example.com is not denied 103",
        ],
    );

    // A grant does the same as an acl.
    let p = Policy::parse(&format!(
        r#"{{ {TAGS} "acls": [ {vps} ], "grants": [{{"src": ["tag:other"], "dst": ["tag:heim-nas"], "ip": ["tcp:7443"]}}], {VPS_TESTS} }}"#
    ))
    .unwrap();
    assert_mentions(
        &p.run_file_tests(),
        &["from tag:other to tag:heim-nas:7443"],
    );
}

#[test]
fn restore_access_beyond_the_operators_ssh_fails() {
    let text = std::fs::read_to_string(POLICY_FILE).unwrap();
    let rule_dst = r#""dst": ["tag:heim-nas:22", "tag:prod-vps:22"]"#;
    let rule_src = r#""src": ["group:backup-operators"]"#;
    for needle in [rule_dst, rule_src, r#""acls": ["#] {
        assert!(
            text.contains(needle),
            "{POLICY_FILE} no longer contains {needle}"
        );
    }
    let edited = |from: &str, to: &str| Policy::parse(&text.replacen(from, to, 1)).unwrap();

    // The operators' rule widened to every port of the NAS.
    let p = edited(rule_dst, r#""dst": ["tag:heim-nas:*", "tag:prod-vps:22"]"#);
    assert_mentions(
        &p.all_failures(),
        &[
            "tests: from operator@example.com to tag:heim-nas:7443: want deny",
            "group:backup-operators is not denied 65534 port(s) of tag:heim-nas",
            "operator@example.com is not denied 65534 port(s) of tag:heim-nas",
        ],
    );

    // The restore rule given to every member instead of the operators.
    let p = edited(rule_src, r#""src": ["autogroup:member"]"#);
    assert_mentions(
        &p.all_failures(),
        &[
            "tests: from alice@example.com to tag:heim-nas:22: want deny",
            "autogroup:member is not denied 1 port(s) of tag:heim-nas, e.g. tag:heim-nas:22",
            "alice@example.com is not denied 1 port(s)",
        ],
    );

    // The NAS allowed into production's SSH (the tunnel the old runbook needed).
    let p = edited(
        r#""acls": ["#,
        r#""acls": [{"action": "accept", "src": ["tag:heim-nas"], "dst": ["tag:prod-vps:22"]},"#,
    );
    assert_mentions(
        &p.all_failures(),
        &[
            "tests: from tag:heim-nas to tag:prod-vps:22: want deny",
            "tag:heim-nas is not denied 1 port(s) of tag:prod-vps",
        ],
    );

    // No restore rule at all: nobody could run §5.
    let p = edited(rule_dst, r#""dst": ["tag:other:22"]"#);
    assert_mentions(
        &p.all_failures(),
        &[
            "from operator@example.com to tag:heim-nas:22: want Yes (the restore)",
            "from group:backup-operators to tag:prod-vps:22: want Yes (the restore)",
        ],
    );
}

#[test]
fn what_the_file_cannot_tell_fails_a_deny() {
    let vps = r#"{"action": "accept", "src": ["tag:prod-vps"], "dst": ["tag:heim-nas:7443"]},"#;
    // The whole tailnet's address range as a source: could be any device.
    let p = policy_with_acls(&format!(
        r#"{vps} {{"action": "accept", "src": ["100.64.0.0/10"], "dst": ["tag:heim-nas:7443"]}}"#
    ));
    assert_eq!(
        p.evaluate("tag:other", "tag:heim-nas:7443", None),
        Ok(Tri::Maybe)
    );
    assert_mentions(
        &p.run_file_tests(),
        &["from tag:other to tag:heim-nas:7443: want deny, the acls give Maybe"],
    );
    // An address as destination: could be the NAS.
    let p = policy_with_acls(&format!(
        r#"{vps} {{"action": "accept", "src": ["tag:other"], "dst": ["100.101.102.103:*"]}}"#
    ));
    assert_eq!(
        p.evaluate("tag:other", "tag:heim-nas:7443", None),
        Ok(Tri::Maybe)
    );
    // Admins: the file does not say who they are.
    let p = policy_with_acls(&format!(
        r#"{vps} {{"action": "accept", "src": ["autogroup:admin"], "dst": ["tag:heim-nas:22"]}}"#
    ));
    assert_eq!(
        p.evaluate("alice@example.com", "tag:heim-nas:22", None),
        Ok(Tri::Maybe)
    );
    assert_eq!(
        p.evaluate("tag:other", "tag:heim-nas:22", None),
        Ok(Tri::No)
    );
    // A posture condition can open access but never proves it.
    let p = policy_with_acls(
        r#"{"action": "accept", "src": ["tag:prod-vps"], "dst": ["tag:heim-nas:7443"], "srcPosture": ["posture:x"]}"#,
    );
    assert_mentions(
        &p.run_file_tests(),
        &["from tag:prod-vps to tag:heim-nas:7443: want accept, the acls give Maybe"],
    );
}

#[test]
fn rules_for_other_destinations_or_protocols() {
    let vps = r#"{"action": "accept", "src": ["tag:prod-vps"], "dst": ["tag:heim-nas:7443"]},"#;
    let p = policy_with_acls(&format!(
        r#"{vps}
        {{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*", "autogroup:internet:*", "tag:other:*"]}},
        {{"action": "accept", "src": ["*"], "dst": ["tag:other:443"]}},
        {{"action": "accept", "src": ["tag:heim-nas"], "dst": ["tag:other:22"], "proto": "tcp"}},
        {{"action": "accept", "src": ["tag:other"], "dst": ["tag:heim-nas:7443"], "proto": "udp"}}"#
    ));
    assert_eq!(
        p.evaluate("alice@example.com", "tag:other:22", None),
        Ok(Tri::Yes)
    );
    assert_eq!(
        p.evaluate("tag:heim-nas", "tag:other:22", None),
        Ok(Tri::Yes)
    );
    assert_eq!(
        p.evaluate("tag:heim-nas", "tag:other:22", Some("udp")),
        Ok(Tri::No)
    );
    assert_eq!(
        p.evaluate("tag:other", "tag:heim-nas:7443", Some("17")),
        Ok(Tri::Yes)
    );
    assert_eq!(
        p.evaluate("tag:other", "tag:heim-nas:7443", None),
        Ok(Tri::No)
    );
    // The file's tests (TCP, as Tailscale's tests default to) pass; the direct checks,
    // whose denials cover every protocol, still find the UDP opening.
    assert!(
        p.run_file_tests().is_empty(),
        "{}",
        report(&p.run_file_tests())
    );
    let failures = p.required_properties();
    assert_eq!(failures.len(), 2, "{}", report(&failures));
    assert_mentions(
        &failures,
        &[
            "from tag:other to tag:heim-nas:7443: want No, the acls give Yes",
            "tag:other is not denied 1 port(s) of tag:heim-nas, e.g. tag:heim-nas:7443 (Yes)",
        ],
    );
}

#[test]
fn malformed_policies_are_refused() {
    let bad = |acls: &str| {
        let text = format!("{{ {TAGS} \"acls\": [ {acls} ] }}");
        Policy::parse(&text).expect_err(&text)
    };
    assert!(bad(r#"{"action": "drop", "src": ["*"], "dst": ["*:*"]}"#).contains("action"));
    assert!(bad(r#"{"action": "accept", "src": ["*"], "dst": ["tag:heim-nas"]}"#).contains("port"));
    assert!(
        bad(r#"{"action": "accept", "src": ["*"], "dst": ["tag:heim-nas:70000"]}"#)
            .contains("bad port")
    );
    assert!(
        bad(r#"{"action": "accept", "src": ["*"], "dst": ["tag:heim-nas:90-80"]}"#)
            .contains("empty port range")
    );
    assert!(
        bad(r#"{"action": "accept", "src": ["tag:nobody"], "dst": ["*:*"]}"#).contains("tagOwners")
    );
    assert!(
        bad(r#"{"action": "accept", "src": ["group:nobody"], "dst": ["*:*"]}"#).contains("groups")
    );
    let e = Policy::parse(&format!(
        r#"{{ {TAGS} "tests": [{{"src": "tag:other", "deny": ["tag:heim-nas:1-100"]}}] }}"#
    ))
    .unwrap_err();
    assert!(e.contains("single port"), "{e}");
}

#[test]
fn ports_parse_and_match() {
    assert_eq!(Ports::parse("*"), Ok(Ports::Any));
    let p = Ports::parse("22,80,8000-8100").unwrap();
    for (port, want) in [
        (22, true),
        (23, false),
        (80, true),
        (7999, false),
        (8000, true),
        (8100, true),
        (8101, false),
    ] {
        assert_eq!(p.contains(port), want, "port {port}");
    }
    assert!(Ports::parse("").is_err());
    assert!(Ports::parse("0").is_err());
    assert!(Ports::parse("22,").is_err());
    assert!(Ports::parse("a-b").is_err());
}

#[test]
fn hujson_comments_and_trailing_commas() {
    let text = r#"
        // leading comment
        {
            /* block
               comment */ "url": "https://example.com/a//b/*c*/", // not a comment inside the string
            "quote": "say \"hi\", // still a string",
            "list": [1, 2, 3,],
            "obj": {"a": 1, /* inner */ },
        }
    "#;
    let v: Value = serde_json::from_str(&hujson_to_json(text).unwrap()).unwrap();
    assert_eq!(v["url"], "https://example.com/a//b/*c*/");
    assert_eq!(v["quote"], "say \"hi\", // still a string");
    assert_eq!(v["list"], serde_json::json!([1, 2, 3]));
    assert_eq!(v["obj"], serde_json::json!({"a": 1}));
    assert!(hujson_to_json("{ /* never closed }").is_err());
    assert!(hujson_to_json(r#"{"a": "never closed}"#).is_err());
    // serde_json's position still points into the original text.
    let e = serde_json::from_str::<Value>(&hujson_to_json("// x\n{\n  \"a\": nope,\n}").unwrap())
        .unwrap_err();
    assert_eq!(e.line(), 3);
}
