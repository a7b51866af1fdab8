//! The symbol table of the nodes waiting spans name: dense ids instead of
//! strings in every record.

use std::sync::Arc;

use super::node_id;

/// A node identity as the symbol table holds it. It hashes by its name alone: one
/// name in several namespaces or environments is rare, and equality still tells
/// them apart, so a lookup costs one short hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node([Arc<str>; 3]);

impl std::hash::Hash for Node {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (*self.0[1]).hash(state);
    }
}

/// A borrowed node identity to look a [`Node`] up without building one.
struct NodeRef<'a>([&'a str; 3]);

impl std::hash::Hash for NodeRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0[1].hash(state);
    }
}

impl hashbrown::Equivalent<Node> for NodeRef<'_> {
    fn equivalent(&self, key: &Node) -> bool {
        // The name first: it is what tells most nodes apart.
        self.0[1] == &*key.0[1] && self.0[0] == &*key.0[0] && self.0[2] == &*key.0[2]
    }
}

/// Nodes held by waiting spans, as dense ids (0 is "none"). Compacted on expiry
/// once it has grown well past what the waiting spans use.
///
/// Looked up by the three parts (hashbrown's `Equivalent`), so a span costs one
/// hash of its parts and no joined string; the joined [`node_id`] is built once
/// per node, for the edges that leave the store.
#[derive(Debug)]
pub(super) struct Symbols {
    nodes: Vec<Node>,
    names: Vec<Arc<str>>,
    ids: hashbrown::HashMap<Node, u32, foldhash::fast::RandomState>,
    last: u32,
}

impl Default for Symbols {
    fn default() -> Self {
        let empty: Arc<str> = Arc::from("");
        Symbols {
            nodes: vec![Node([empty.clone(), empty.clone(), empty.clone()])],
            names: vec![empty],
            ids: hashbrown::HashMap::default(),
            last: 0,
        }
    }
}

impl Symbols {
    /// The id of a node identity; spans of one resource come in a row, so the
    /// last id is checked first.
    pub(super) fn node(&mut self, parts: [&str; 3]) -> u32 {
        let probe = NodeRef(parts);
        if self.last != 0
            && hashbrown::Equivalent::equivalent(&probe, &self.nodes[self.last as usize])
        {
            return self.last;
        }
        let id = match self.ids.get(&probe) {
            Some(&id) => id,
            None => {
                let id = self.nodes.len() as u32;
                let node = Node(parts.map(Arc::from));
                self.names.push(Arc::from(node_id(parts)));
                self.nodes.push(node.clone());
                self.ids.insert(node, id);
                id
            }
        };
        self.last = id;
        id
    }

    /// The joined identity of `id`.
    pub(super) fn name(&self, id: u32) -> &Arc<str> {
        &self.names[id as usize]
    }

    /// The parts of `id`.
    pub(super) fn parts(&self, id: u32) -> [&str; 3] {
        let [a, b, c] = &self.nodes[id as usize].0;
        [a, b, c]
    }

    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }
}
