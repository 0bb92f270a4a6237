//! The AI inventory at run time: the configured registry compiled into hash lookups, role policies, and the
//! `seen` tracker behind the `inventory` table (everything Vigil has seen, registered or not).

use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use foldhash::{HashMap, HashSet};

use crate::config::{Asset, Inventory, RoleSource};

/// Entity types the inventory tracks. The discriminant indexes the tracker's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tracked {
    Provider = 0,
    Model = 1,
    Endpoint = 2,
    Agent = 3,
    User = 4,
    Tool = 5,
    DataSource = 6,
}

impl Tracked {
    pub const ALL: [Tracked; 7] = [
        Tracked::Provider,
        Tracked::Model,
        Tracked::Endpoint,
        Tracked::Agent,
        Tracked::User,
        Tracked::Tool,
        Tracked::DataSource,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Tracked::Provider => "provider",
            Tracked::Model => "model",
            Tracked::Endpoint => "endpoint",
            Tracked::Agent => "agent",
            Tracked::User => "user",
            Tracked::Tool => "tool",
            Tracked::DataSource => "data_source",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Default)]
struct RoleRules {
    all_models: bool,
    models: HashSet<String>,
    all_classes: bool,
    classes: HashSet<String>,
}

#[derive(Debug, Default)]
struct AgentRules {
    tools: HashSet<String>,
    data_sources: HashSet<String>,
}

/// The configured inventory, compiled for lookups on the hot path.
#[derive(Debug, Default)]
pub struct CompiledInventory {
    pub source: Inventory,
    assets: [HashMap<String, usize>; 4],
    agents: HashMap<String, AgentRules>,
    roles: HashMap<String, RoleRules>,
    users: HashMap<String, String>,
    classification: HashMap<String, String>,
    allowed_tools: HashSet<String>,
    role_source: RoleSource,
}

/// A user's role lookup result.
pub enum Access {
    Allowed,
    Denied,
    /// No role, or the role has no policy: the privilege detector has nothing to judge.
    Unknown,
}

impl CompiledInventory {
    pub fn new(source: Inventory, role_source: RoleSource) -> Self {
        let index = |v: &[Asset]| {
            v.iter()
                .enumerate()
                .map(|(i, a)| (a.id.clone(), i))
                .collect()
        };
        let assets = [
            index(&source.providers),
            index(&source.models),
            index(&source.endpoints),
            source
                .agents
                .iter()
                .enumerate()
                .map(|(i, a)| (a.id.clone(), i))
                .collect(),
        ];
        let agents = source
            .agents
            .iter()
            .map(|a| {
                let rules = AgentRules {
                    tools: a.tools.iter().cloned().collect(),
                    data_sources: a.data_sources.iter().cloned().collect(),
                };
                (a.id.clone(), rules)
            })
            .collect();
        let roles = source
            .roles
            .iter()
            .map(|r| {
                let rules = RoleRules {
                    all_models: r.models.iter().any(|m| m == "*"),
                    models: r.models.iter().cloned().collect(),
                    all_classes: r.data_classifications.iter().any(|c| c == "*"),
                    classes: r.data_classifications.iter().cloned().collect(),
                };
                (r.name.clone(), rules)
            })
            .collect();
        let users = source
            .users
            .iter()
            .map(|(u, r)| (u.clone(), r.clone()))
            .collect();
        let classification = source
            .data_sources
            .iter()
            .map(|d| (d.id.clone(), d.classification.clone()))
            .collect();
        let allowed_tools = source
            .agents
            .iter()
            .flat_map(|a| a.tools.iter().cloned())
            .collect();
        Self {
            assets,
            agents,
            roles,
            users,
            classification,
            allowed_tools,
            role_source,
            source,
        }
    }

    /// Whether any asset of this type is registered (shadow_ai only judges types with a registry).
    pub fn has_registry(&self, t: Tracked) -> bool {
        match t {
            Tracked::Provider | Tracked::Model | Tracked::Endpoint | Tracked::Agent => {
                !self.assets[t as usize].is_empty()
            }
            _ => false,
        }
    }

    /// Endpoints match on `host:port` or on `host` alone.
    pub fn is_registered(&self, t: Tracked, id: &str) -> bool {
        match t {
            Tracked::Provider | Tracked::Model | Tracked::Agent => {
                self.assets[t as usize].contains_key(id)
            }
            Tracked::Endpoint => {
                let m = &self.assets[Tracked::Endpoint as usize];
                m.contains_key(id)
                    || id
                        .rsplit_once(':')
                        .is_some_and(|(host, _)| m.contains_key(host))
            }
            Tracked::User => self.users.contains_key(id),
            Tracked::Tool => self.allowed_tools.contains(id),
            Tracked::DataSource => self.classification.contains_key(id),
        }
    }

    /// Owner, purpose and risk tier of a registered asset.
    pub fn describe(&self, t: Tracked, id: &str) -> Option<(&str, &str, &str)> {
        fn asset<'a>(
            v: &'a [Asset],
            m: &HashMap<String, usize>,
            id: &str,
        ) -> Option<(&'a str, &'a str, &'a str)> {
            m.get(id).map(|&i| {
                (
                    v[i].owner.as_str(),
                    v[i].purpose.as_str(),
                    v[i].risk_tier.as_str(),
                )
            })
        }
        match t {
            Tracked::Provider => asset(&self.source.providers, &self.assets[0], id),
            Tracked::Model => asset(&self.source.models, &self.assets[1], id),
            Tracked::Endpoint => asset(&self.source.endpoints, &self.assets[2], id).or_else(|| {
                id.rsplit_once(':')
                    .and_then(|(h, _)| asset(&self.source.endpoints, &self.assets[2], h))
            }),
            Tracked::Agent => self.assets[3].get(id).map(|&i| {
                let a = &self.source.agents[i];
                (a.owner.as_str(), a.purpose.as_str(), a.risk_tier.as_str())
            }),
            _ => None,
        }
    }

    /// `Some(false)` when a registered agent uses a tool outside its allowlist; `None` for unregistered agents.
    pub fn agent_may_use_tool(&self, agent: &str, tool: &str) -> Option<bool> {
        self.agents.get(agent).map(|a| a.tools.contains(tool))
    }

    pub fn agent_may_use_data_source(&self, agent: &str, ds: &str) -> Option<bool> {
        self.agents.get(agent).map(|a| a.data_sources.contains(ds))
    }

    /// The role of a user per the configured [`RoleSource`]: possibly several, comma-separated (a
    /// `user.roles` array). An attribute naming no role the policies know falls back to the users table,
    /// so a made-up role string does not switch the privilege check off.
    pub fn role_of<'a>(&'a self, user: &str, attribute: Option<&'a str>) -> Option<&'a str> {
        let table = || self.users.get(user).map(String::as_str);
        match self.role_source {
            RoleSource::Attribute => {
                let attribute = attribute.filter(|r| !r.is_empty());
                attribute
                    .filter(|r| self.known_roles(r).next().is_some())
                    .or_else(table)
                    .or(attribute)
            }
            RoleSource::Table => table(),
        }
    }

    fn known_roles<'a>(&'a self, roles: &'a str) -> impl Iterator<Item = &'a RoleRules> + 'a {
        roles.split(',').filter_map(|r| self.roles.get(r.trim()))
    }

    /// Allowed when any of the roles allows; denied when one is known and none allows.
    fn judge(&self, roles: &str, allows: impl Fn(&RoleRules) -> bool) -> Access {
        let mut known = false;
        for r in self.known_roles(roles) {
            if allows(r) {
                return Access::Allowed;
            }
            known = true;
        }
        if known {
            Access::Denied
        } else {
            Access::Unknown
        }
    }

    pub fn role_may_use_model(&self, role: &str, model: &str) -> Access {
        self.judge(role, |r| r.all_models || r.models.contains(model))
    }

    /// Judges a data source by its classification; unknown sources have nothing to judge.
    pub fn role_may_read(&self, role: &str, data_source: &str) -> (Access, Option<&str>) {
        let Some(class) = self.classification.get(data_source) else {
            return (Access::Unknown, None);
        };
        let access = self.judge(role, |r| r.all_classes || r.classes.contains(class));
        (access, Some(class.as_str()))
    }
}

/// What Vigil knows about one observed entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub first_us: i64,
    pub last_us: i64,
    pub count: u64,
    /// shadow_ai has reported it (once per entity, not per event).
    pub shadow_alerted: bool,
}

/// Everything observed, per entity type.
#[derive(Debug, Default)]
pub struct SeenTracker {
    maps: [HashMap<String, Seen>; 7],
}

impl SeenTracker {
    /// Counts an observation; allocates only the first time an entity is seen.
    pub fn observe(&mut self, t: Tracked, id: &str, time_us: i64) -> &mut Seen {
        self.observe_within(t, id, time_us, usize::MAX)
            .expect("no bound, always tracked")
    }

    /// [`SeenTracker::observe`], but a new entity is not tracked (`None`) once `max` of its kind are:
    /// ids that change on every event must not grow the inventory without bound.
    /// [`SeenTracker::evict`] makes room again.
    pub fn observe_within(
        &mut self,
        t: Tracked,
        id: &str,
        time_us: i64,
        max: usize,
    ) -> Option<&mut Seen> {
        let map = &mut self.maps[t as usize];
        if !map.contains_key(id) {
            if map.len() >= max {
                return None;
            }
            map.insert(
                id.to_string(),
                Seen {
                    first_us: time_us,
                    last_us: time_us,
                    count: 0,
                    shadow_alerted: false,
                },
            );
        }
        let s = map.get_mut(id).expect("inserted above");
        s.count += 1;
        s.first_us = s.first_us.min(time_us);
        s.last_us = s.last_us.max(time_us);
        Some(s)
    }

    /// Once a kind holds nine tenths of `max` entities, drops down to eight tenths: unregistered before
    /// registered, least recently seen first. Returns how many of each kind were dropped.
    pub fn evict(&mut self, max: usize, inv: &CompiledInventory) -> Vec<(Tracked, usize)> {
        let mut dropped = Vec::new();
        for t in Tracked::ALL {
            let map = &mut self.maps[t as usize];
            if map.len() < max.saturating_mul(9) / 10 || map.is_empty() {
                continue;
            }
            let mut ranked: Vec<((bool, i64), String)> = map
                .iter()
                .map(|(id, s)| ((inv.is_registered(t, id), s.last_us), id.clone()))
                .collect();
            ranked.sort_unstable();
            let n = map.len().saturating_sub(max.saturating_mul(8) / 10);
            for (_, id) in ranked.into_iter().take(n) {
                map.remove(&id);
            }
            dropped.push((t, n));
        }
        dropped
    }

    pub fn get(&self, t: Tracked, id: &str) -> Option<&Seen> {
        self.maps[t as usize].get(id)
    }

    pub fn get_mut(&mut self, t: Tracked, id: &str) -> Option<&mut Seen> {
        self.maps[t as usize].get_mut(id)
    }

    pub fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `inventory` table: every seen entity plus registered assets never seen.
    pub fn to_batch(&self, inv: &CompiledInventory) -> RecordBatch {
        let mut rows: Vec<(Tracked, &str, Option<&Seen>)> = Vec::with_capacity(self.len());
        for t in Tracked::ALL {
            let mut ids: Vec<&String> = self.maps[t as usize].keys().collect();
            ids.sort();
            rows.extend(
                ids.into_iter()
                    .map(|id| (t, id.as_str(), self.maps[t as usize].get(id))),
            );
        }
        let registered_unseen = [
            (
                Tracked::Provider,
                inv.source
                    .providers
                    .iter()
                    .map(|a| a.id.as_str())
                    .collect::<Vec<_>>(),
            ),
            (
                Tracked::Model,
                inv.source.models.iter().map(|a| a.id.as_str()).collect(),
            ),
            (
                Tracked::Endpoint,
                inv.source.endpoints.iter().map(|a| a.id.as_str()).collect(),
            ),
            (
                Tracked::Agent,
                inv.source.agents.iter().map(|a| a.id.as_str()).collect(),
            ),
        ];
        for (t, ids) in registered_unseen {
            for id in ids {
                if !self.maps[t as usize].contains_key(id) {
                    rows.push((t, id, None));
                }
            }
        }
        let n = rows.len();
        let mut strings: Vec<StringBuilder> = (0..5)
            .map(|_| StringBuilder::with_capacity(n, n * 16))
            .collect();
        let mut registered = BooleanBuilder::with_capacity(n);
        let mut alerted = BooleanBuilder::with_capacity(n);
        let mut first = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut last = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut count = Int64Builder::with_capacity(n);
        for (t, id, seen) in rows {
            let desc = inv.describe(t, id);
            strings[0].append_value(t.as_str());
            strings[1].append_value(id);
            strings[2].append_option(desc.map(|d| d.0));
            strings[3].append_option(desc.map(|d| d.1));
            strings[4].append_option(desc.map(|d| d.2));
            registered.append_value(inv.is_registered(t, id));
            first.append_option(seen.map(|s| s.first_us));
            last.append_option(seen.map(|s| s.last_us));
            count.append_value(seen.map_or(0, |s| s.count as i64));
            alerted.append_value(seen.is_some_and(|s| s.shadow_alerted));
        }
        let mut s = strings
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef);
        let mut next = || s.next().expect("five string columns");
        let columns: Vec<ArrayRef> = vec![
            next(),
            next(),
            Arc::new(registered.finish()),
            next(),
            next(),
            next(),
            Arc::new(first.finish()),
            Arc::new(last.finish()),
            Arc::new(count.finish()),
            Arc::new(alerted.finish()),
        ];
        RecordBatch::try_new(inventory_schema(), columns)
            .expect("inventory columns match the schema")
    }

    /// Restores counts from `inventory` rows. Registered-but-unseen rows (no `first_seen`) are skipped; rows
    /// with a different schema are ignored (logged) so that an old state file cannot stop the stage.
    pub fn restore(&mut self, batch: &RecordBatch) -> usize {
        let get = |name: &str| batch.column_by_name(name);
        let (Some(et), Some(id), Some(first), Some(last), Some(count)) = (
            get("entity_type"),
            get("entity_id"),
            get("first_seen"),
            get("last_seen"),
            get("event_count"),
        ) else {
            tracing::warn!("inventory state has an unexpected schema; ignored");
            return 0;
        };
        let (Some(et), Some(id)) = (et.as_string_opt::<i32>(), id.as_string_opt::<i32>()) else {
            return 0;
        };
        let (Some(first), Some(last), Some(count)) = (
            first.as_primitive_opt::<TimestampMicrosecondType>(),
            last.as_primitive_opt::<TimestampMicrosecondType>(),
            count.as_primitive_opt::<Int64Type>(),
        ) else {
            return 0;
        };
        let alerted =
            get("shadow_alerted").and_then(|a| a.as_any().downcast_ref::<BooleanArray>().cloned());
        let mut restored = 0;
        for i in 0..batch.num_rows() {
            if et.is_null(i) || id.is_null(i) || first.is_null(i) || last.is_null(i) {
                continue;
            }
            let Some(t) = Tracked::parse(et.value(i)) else {
                continue;
            };
            let seen = Seen {
                first_us: first.value(i),
                last_us: last.value(i),
                count: count.value(i).max(0) as u64,
                shadow_alerted: alerted
                    .as_ref()
                    .is_some_and(|a| a.is_valid(i) && a.value(i)),
            };
            self.maps[t as usize].insert(id.value(i).to_string(), seen);
            restored += 1;
        }
        restored
    }
}

/// The `inventory` table: everything Vigil has seen, registered or not.
pub fn inventory_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
            Arc::new(Schema::new(vec![
                Field::new("entity_type", DataType::Utf8, false),
                Field::new("entity_id", DataType::Utf8, false),
                Field::new("registered", DataType::Boolean, false),
                Field::new("owner", DataType::Utf8, true),
                Field::new("purpose", DataType::Utf8, true),
                Field::new("risk_tier", DataType::Utf8, true),
                Field::new("first_seen", ts.clone(), true),
                Field::new("last_seen", ts, true),
                Field::new("event_count", DataType::Int64, false),
                Field::new("shadow_alerted", DataType::Boolean, false),
            ]))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentAsset, DataSource, RolePolicy};

    fn inv() -> CompiledInventory {
        let source = Inventory {
            models: vec![Asset {
                id: "gpt-4o".into(),
                owner: "platform".into(),
                ..Default::default()
            }],
            endpoints: vec![Asset {
                id: "api.openai.com".into(),
                ..Default::default()
            }],
            agents: vec![AgentAsset {
                id: "billing".into(),
                tools: vec!["lookup_invoice".into()],
                data_sources: vec!["invoices".into()],
                ..Default::default()
            }],
            roles: vec![RolePolicy {
                name: "support".into(),
                models: vec!["gpt-4o".into()],
                data_classifications: vec!["internal".into()],
            }],
            users: [("alice".to_string(), "support".to_string())].into(),
            data_sources: vec![
                DataSource {
                    id: "invoices".into(),
                    classification: "internal".into(),
                },
                DataSource {
                    id: "payroll".into(),
                    classification: "restricted".into(),
                },
            ],
            ..Default::default()
        };
        CompiledInventory::new(source, RoleSource::Attribute)
    }

    #[test]
    fn lookups_follow_the_registry() {
        let i = inv();
        assert!(i.is_registered(Tracked::Endpoint, "api.openai.com:443"));
        assert!(!i.is_registered(Tracked::Endpoint, "api.deepseek.com:443"));
        assert!(i.has_registry(Tracked::Model) && !i.has_registry(Tracked::Provider));
        assert_eq!(i.agent_may_use_tool("billing", "shell"), Some(false));
        assert_eq!(i.agent_may_use_tool("unknown", "shell"), None);
        assert_eq!(i.role_of("alice", None), Some("support"));
        assert_eq!(
            i.role_of("alice", Some("admin")),
            Some("support"),
            "a role no policy knows falls back to the users table"
        );
        assert_eq!(i.role_of("bob", Some("admin")), Some("admin"));
        assert_eq!(
            i.role_of("alice", Some("support,viewer")),
            Some("support,viewer")
        );
        assert!(matches!(
            i.role_may_use_model("viewer,support", "o1"),
            Access::Denied
        ));
        assert!(matches!(
            i.role_may_use_model("viewer,support", "gpt-4o"),
            Access::Allowed
        ));
        assert!(matches!(
            i.role_may_use_model("viewer", "o1"),
            Access::Unknown
        ));
        assert!(matches!(
            i.role_may_read("viewer, support", "payroll"),
            (Access::Denied, Some("restricted"))
        ));
        assert!(matches!(
            i.role_may_use_model("support", "o1"),
            Access::Denied
        ));
        assert!(matches!(
            i.role_may_read("support", "payroll"),
            (Access::Denied, Some("restricted"))
        ));
        assert!(matches!(
            i.role_may_read("support", "wiki"),
            (Access::Unknown, None)
        ));
    }

    #[test]
    fn inventory_batch_round_trips_through_restore() {
        let i = inv();
        let mut t = SeenTracker::default();
        t.observe(Tracked::Model, "gpt-4o", 10);
        t.observe(Tracked::Model, "gpt-4o", 30);
        t.observe(Tracked::Model, "deepseek-chat", 20)
            .shadow_alerted = true;
        let b = t.to_batch(&i);
        // gpt-4o, deepseek-chat + registered-unseen endpoint and agent.
        assert_eq!(b.num_rows(), 4);
        let mut r = SeenTracker::default();
        assert_eq!(r.restore(&b), 2);
        assert_eq!(r.get(Tracked::Model, "gpt-4o").unwrap().count, 2);
        assert_eq!(r.get(Tracked::Model, "gpt-4o").unwrap().first_us, 10);
        assert!(
            r.get(Tracked::Model, "deepseek-chat")
                .unwrap()
                .shadow_alerted
        );
        let reg = b.column_by_name("registered").unwrap().as_boolean();
        let ids = b.column_by_name("entity_id").unwrap().as_string::<i32>();
        let owner = b.column_by_name("owner").unwrap().as_string::<i32>();
        for row in 0..b.num_rows() {
            if ids.value(row) == "gpt-4o" {
                assert!(reg.value(row));
                assert_eq!(owner.value(row), "platform");
            }
            if ids.value(row) == "deepseek-chat" {
                assert!(!reg.value(row));
            }
        }
    }
}
