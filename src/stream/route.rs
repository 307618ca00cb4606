//! Route: a decoded change becomes the ids of the products whose summary may have
//! changed. We never apply row images: apply recomputes those products from the source
//! tables, so only the product id column of each row matters here.

use std::collections::{BTreeMap, HashMap};

use super::pgoutput::{LogicalMessage, OldTuple, Relation, TupleData, Value};
use crate::ops::metrics::Pass;

/// What one change means for the summary.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// Nothing to recompute (a Relation, Type or Origin message, an unrelated table).
    None,
    /// Recompute these products (the old and the new id when a row moved).
    Products(Option<&'a str>, Option<&'a str>),
    /// Recompute every product: a source table was truncated, or a delete carried no
    /// product id (see `missing_id`).
    All(AllReason),
}

/// Why every product must be recomputed: the kind (the metric's label) and the sentence
/// the log shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllReason {
    pub pass: Pass,
    pub why: String,
}

impl std::fmt::Display for AllReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// The table and operation of a row change, for the changes counter (`None` for
/// messages that are not row changes of a source table).
pub type Counted<'r> = Option<(&'r str, Op)>;

/// Which table and operation a change was, for the changes counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

struct Known {
    table: String,
    /// Index of the product id column, `None` for a table we do not read.
    product_col: Option<usize>,
    /// Why an update without an old row must recompute every product: the Relation
    /// message says the replica identity does not carry the product id column, so the
    /// update may have moved the row away from a product it does not name. `None` when
    /// the identity carries it (FULL, or a key that includes it: an update that changes
    /// it then sends the old key).
    weak_identity: Option<String>,
}

/// Keeps the relation map that pgoutput sends before the first change of each table
/// (and again after its schema changes), and routes changes through it.
pub struct Router {
    schema: String,
    sources: BTreeMap<String, String>,
    relations: HashMap<u32, Known>,
}

/// A change the router cannot understand: the stream cannot be processed further.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("change for relation {0} arrived before its Relation message (protocol violation)")]
    UnknownRelation(u32),
    #[error(
        "table {table} no longer has column {column:?}, which tables.sources names as its \
         product id: fix the config or the table"
    )]
    MissingColumn { table: String, column: String },
    #[error("{table}.{column} holds a value that is not UTF-8 text; product ids must be text")]
    NotText { table: String, column: String },
}

impl Router {
    pub fn new(schema: &str, sources: &BTreeMap<String, String>) -> Router {
        Router {
            schema: schema.to_string(),
            sources: sources.clone(),
            relations: HashMap::new(),
        }
    }

    /// Routes one decoded message; `Relation` messages update the map.
    pub fn route<'m>(
        &mut self,
        msg: &'m LogicalMessage,
    ) -> Result<(Route<'m>, Counted<'_>), RouteError> {
        let (rel, op, route) = match msg {
            LogicalMessage::Relation(rel) => {
                self.learn(rel)?;
                return Ok((Route::None, None));
            }
            LogicalMessage::Insert { relation_id, new } => {
                let k = self.known(*relation_id)?;
                let r = k.ids(None, Some(new))?;
                (k, Op::Insert, r)
            }
            LogicalMessage::Update {
                relation_id,
                old,
                new,
            } => {
                let k = self.known(*relation_id)?;
                let r = match (old, &k.weak_identity) {
                    (None, Some(why)) if k.product_col.is_some() => Route::All(AllReason {
                        pass: Pass::WeakReplicaIdentity,
                        why: why.clone(),
                    }),
                    _ => k.ids(old.as_ref().map(|o| o.tuple()), Some(new))?,
                };
                (k, Op::Update, r)
            }
            LogicalMessage::Delete { relation_id, old } => {
                let k = self.known(*relation_id)?;
                let r = match k.ids(Some(old.tuple()), None)? {
                    Route::Products(None, None)
                        if k.product_col.is_some() && !k.no_product(old) =>
                    {
                        Route::All(AllReason {
                            pass: Pass::DeleteWithoutProductId,
                            why: missing_id(&k.table),
                        })
                    }
                    r => r,
                };
                (k, Op::Delete, r)
            }
            LogicalMessage::Truncate { relation_ids, .. } => {
                let mut tables = Vec::new();
                for id in relation_ids {
                    let k = self.known(*id)?;
                    if k.product_col.is_some() {
                        tables.push(k.table.clone());
                    }
                }
                if tables.is_empty() {
                    return Ok((Route::None, None));
                }
                let first = self.known(relation_ids[0])?;
                let reason = AllReason {
                    pass: Pass::Truncate,
                    why: format!("TRUNCATE of {}", tables.join(", ")),
                };
                return Ok((
                    Route::All(reason),
                    Some((first.table.as_str(), Op::Truncate)),
                ));
            }
            _ => return Ok((Route::None, None)),
        };
        if rel.product_col.is_none() {
            return Ok((Route::None, None));
        }
        Ok((route, Some((rel.table.as_str(), op))))
    }

    fn known(&self, id: u32) -> Result<&Known, RouteError> {
        self.relations
            .get(&id)
            .ok_or(RouteError::UnknownRelation(id))
    }

    fn learn(&mut self, rel: &Relation) -> Result<(), RouteError> {
        let product_col = if rel.namespace == self.schema {
            match self.sources.get(&rel.name) {
                Some(column) => {
                    Some(
                        rel.column_index(column)
                            .ok_or_else(|| RouteError::MissingColumn {
                                table: rel.name.clone(),
                                column: column.clone(),
                            })?,
                    )
                }
                None => None,
            }
        } else {
            None
        };
        if product_col.is_none() {
            tracing::warn!(
                table = %format!("{}.{}", rel.namespace, rel.name),
                "the publication carries a table the summary does not read; its changes are ignored"
            );
        }
        let weak_identity = product_col
            .filter(|&c| !rel.columns[c].is_key())
            .map(|c| weak_update(&self.schema, &rel.name, &rel.columns[c].name));
        self.relations.insert(
            rel.id,
            Known {
                table: rel.name.clone(),
                product_col,
                weak_identity,
            },
        );
        Ok(())
    }

    /// Whether the last Relation message of `relation_id` announced a replica identity
    /// without the product id column (`None`: not a source table, or not known).
    pub fn weak_identity(&self, relation_id: u32) -> Option<bool> {
        let k = self.relations.get(&relation_id)?;
        k.product_col.map(|_| k.weak_identity.is_some())
    }
}

impl Known {
    /// The old row is the whole row (`REPLICA IDENTITY FULL`) and its product id is NULL:
    /// the row belonged to no product (a nullable product id column), so its delete
    /// changes no summary row. Only a `Key` tuple leaves out columns (sent as NULL), and
    /// only there does a NULL mean the id is missing.
    fn no_product(&self, old: &OldTuple) -> bool {
        match (old, self.product_col) {
            (OldTuple::Full(t), Some(col)) => matches!(t.get(col), Some(Value::Null)),
            _ => false,
        }
    }

    fn ids<'m>(
        &self,
        old: Option<&'m TupleData>,
        new: Option<&'m TupleData>,
    ) -> Result<Route<'m>, RouteError> {
        let Some(col) = self.product_col else {
            return Ok(Route::None);
        };
        let get = |t: Option<&'m TupleData>| -> Result<Option<&'m str>, RouteError> {
            match t.and_then(|t| t.get(col)) {
                Some(v @ Value::Text(_)) => {
                    v.as_str().map(Some).ok_or_else(|| RouteError::NotText {
                        table: self.table.clone(),
                        column: format!("#{col}"),
                    })
                }
                // Null (no product, or a key-only old tuple without this column: the caller
                // tells them apart), unchanged TOAST (an id is never toasted in practice;
                // the new tuple or the old one still names it).
                _ => Ok(None),
            }
        };
        let old_id = get(old)?;
        let new_id = get(new)?;
        Ok(match (old_id, new_id) {
            (Some(a), Some(b)) if a == b => Route::Products(None, Some(b)),
            (a, b) => Route::Products(a, b),
        })
    }
}

/// Why an update of a table whose replica identity lacks the product id column makes us
/// recompute everything: without the old row, a row moved from one product to another
/// names only the new one, and the old one would keep the row in its summary.
fn weak_update(schema: &str, table: &str, column: &str) -> String {
    format!(
        "an UPDATE on {table} carried no old row and the table's replica identity does not \
         include {column:?}, so the row may have moved from a product it does not name; \
         every product is recomputed instead. Fix: ALTER TABLE {} REPLICA IDENTITY FULL",
        crate::pg::sql::qualified(schema, table)
    )
}

/// Why a delete without a product id makes us recompute everything instead of failing:
/// the WAL record will never contain the id, so stopping would stop forever. The fix is
/// for the future, and the log line says it.
fn missing_id(table: &str) -> String {
    format!(
        "a DELETE on {table} carried no product id because the table's replica identity does \
         not include it; every product is recomputed instead. Fix: run `cdc-worker setup` \
         (it sets REPLICA IDENTITY FULL) or ALTER TABLE \"{table}\" REPLICA IDENTITY FULL"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::pgoutput::testing::{encode, Msg, Val};
    use crate::stream::pgoutput::{decode, Column};

    /// A router that knows `public.ProductImage` (id, productId) as relation 7.
    fn image_router() -> Router {
        let sources = BTreeMap::from([("ProductImage".to_string(), "productId".to_string())]);
        let mut r = Router::new("public", &sources);
        let col = |name: &str, flags| Column {
            flags,
            name: name.into(),
            type_oid: 25,
            type_modifier: -1,
        };
        let rel = Relation {
            id: 7,
            namespace: "public".into(),
            name: "ProductImage".into(),
            replica_identity: b'f',
            columns: vec![col("id", 1), col("productId", 0)],
        };
        let msg = decode(&encode(&Msg::Relation(rel))).unwrap();
        r.route(&msg).unwrap();
        r
    }

    fn delete(marker: u8, product: Val) -> LogicalMessage {
        decode(&encode(&Msg::Delete {
            relation_id: 7,
            old: (marker, vec![Val::text("img1"), product]),
        }))
        .unwrap()
    }

    #[test]
    fn a_full_old_row_with_a_null_product_id_belongs_to_no_product() {
        let mut r = image_router();
        let msg = delete(b'O', Val::Null);
        let (route, counted) = r.route(&msg).unwrap();
        assert_eq!(route, Route::Products(None, None));
        assert_eq!(counted, Some(("ProductImage", Op::Delete)));
    }

    #[test]
    fn a_key_only_old_row_without_the_product_id_recomputes_every_product() {
        let mut r = image_router();
        let msg = delete(b'K', Val::Null);
        let (route, _) = r.route(&msg).unwrap();
        assert!(
            matches!(&route, Route::All(all) if all.why.contains("REPLICA IDENTITY FULL")),
            "{route:?}"
        );
    }

    #[test]
    fn a_full_old_row_names_its_product() {
        let mut r = image_router();
        let msg = delete(b'O', Val::text("p1"));
        assert_eq!(r.route(&msg).unwrap().0, Route::Products(Some("p1"), None));
    }

    fn price(identity: u8, key_flags: [u8; 3]) -> LogicalMessage {
        let col = |flags, name: &str| Column {
            flags,
            name: name.into(),
            type_oid: 25,
            type_modifier: -1,
        };
        decode(&encode(&Msg::Relation(Relation {
            id: 7,
            namespace: "public".into(),
            name: "Price".into(),
            replica_identity: identity,
            columns: vec![
                col(key_flags[0], "id"),
                col(key_flags[1], "productId"),
                col(key_flags[2], "amount"),
            ],
        })))
        .unwrap()
    }

    fn update(old: Option<Vec<Val>>) -> LogicalMessage {
        decode(&encode(&Msg::Update {
            relation_id: 7,
            old: old.map(|o| (b'O', o)),
            new: vec![Val::text("usd1"), Val::text("p2"), Val::text("100")],
        }))
        .unwrap()
    }

    fn price_router() -> Router {
        let sources = [("Price".to_string(), "productId".to_string())].into();
        Router::new("public", &sources)
    }

    #[test]
    fn an_update_under_a_weak_identity_recomputes_everything_and_says_the_fix() {
        let mut r = price_router();
        // REPLICA IDENTITY DEFAULT: only the primary key `id` is flagged.
        r.route(&price(b'd', [1, 0, 0])).unwrap();
        assert_eq!(r.weak_identity(7), Some(true));
        let msg = update(None);
        let (route, _) = r.route(&msg).unwrap();
        match route {
            Route::All(all) => assert!(
                all.why
                    .contains("ALTER TABLE \"public\".\"Price\" REPLICA IDENTITY FULL"),
                "{all}"
            ),
            other => panic!("expected every product, got {other:?}"),
        }
    }

    #[test]
    fn a_full_identity_routes_old_and_new_products() {
        let mut r = price_router();
        // REPLICA IDENTITY FULL flags every column.
        r.route(&price(b'f', [1, 1, 1])).unwrap();
        assert_eq!(r.weak_identity(7), Some(false));
        let msg = update(Some(vec![
            Val::text("usd1"),
            Val::text("p1"),
            Val::text("100"),
        ]));
        assert_eq!(
            r.route(&msg).unwrap().0,
            Route::Products(Some("p1"), Some("p2"))
        );
        // Weakened mid-stream: the next Relation message says so, the next update
        // without an old row recomputes everything; restored, it routes again.
        r.route(&price(b'd', [1, 0, 0])).unwrap();
        assert!(matches!(r.route(&update(None)).unwrap().0, Route::All(_)));
        r.route(&price(b'f', [1, 1, 1])).unwrap();
        assert_eq!(
            r.route(&update(None)).unwrap().0,
            Route::Products(None, Some("p2"))
        );
    }
}
