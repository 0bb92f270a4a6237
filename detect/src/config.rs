//! Detection configuration: the AI inventory, role policies and detector settings (`[detect]` and
//! `[inventory]` in the config file).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {}
