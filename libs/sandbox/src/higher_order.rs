//! Higher-order built-ins that do not swallow their callback's errors.
//!
//! Rhai 1.27's `sort`/`sort_by`/`order`/`order_by` and `dedup` with a
//! comparator turn any error the comparator raises into an answer (an
//! ordering by type, or "not equal") and go on calling it. That error may be
//! the sandbox ending the invocation (deadline, memory, operations), so a
//! script could outlive its limits by sorting with a comparator that loops.
//! Every other higher-order built-in PiCloud's packages hold (`map`,
//! `filter`, `reduce`, `drain`, `retain`, `index_of`, `some`, `all`, `find`,
//! `find_map`, `zip`, `for_each`, the object-map ones, `call`) passes the
//! error on.
//!
//! Functions registered on the engine take precedence over its packages', so
//! these replace Rhai's under the same names and signatures: same results,
//! but the first error the callback raises ends the call with that error.
//! (The sandbox's termination is also sticky, see `Capture::stop`: this
//! module keeps a swallowing built-in from costing more than one callback.)

use std::cmp::Ordering;

use rhai::{Array, Dynamic, Engine, EvalAltResult, FnPtr, NativeCallContext};

type Fallible<T> = Result<T, Box<EvalAltResult>>;

pub(crate) fn register(engine: &mut Engine) {
    for name in ["sort", "sort_by"] {
        engine.register_fn(
            name,
            |ctx: NativeCallContext, array: &mut Array, comparer: FnPtr| -> Fallible<()> {
                let items = std::mem::take(array);
                *array = sorted(&ctx, items, &comparer)?;
                Ok(())
            },
        );
    }
    for name in ["order", "order_by"] {
        engine.register_fn(
            name,
            |ctx: NativeCallContext, array: &mut Array, comparer: FnPtr| -> Fallible<Array> {
                sorted(&ctx, array.clone(), &comparer)
            },
        );
    }
    engine.register_fn(
        "dedup",
        |ctx: NativeCallContext, array: &mut Array, comparer: FnPtr| -> Fallible<()> {
            let mut failed = None;
            array.dedup_by(|later, earlier| {
                if failed.is_some() {
                    return false;
                }
                match comparer.call_raw(&ctx, None, [earlier.clone(), later.clone()]) {
                    Ok(same) => same.as_bool().unwrap_or(false),
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            });
            failed.map_or(Ok(()), Err)
        },
    );
}

/// `items` in the order `comparer` gives, as Rhai reads its answer: an
/// integer by its sign, `true` as "before", `false` as "after", anything else
/// as the elements' types' order. A stable merge sort: unlike `slice::sort_by`
/// it can stop at the first error, and cannot panic on a comparer that is not
/// a total order.
fn sorted(ctx: &NativeCallContext, mut items: Array, comparer: &FnPtr) -> Fallible<Array> {
    if items.len() <= 1 {
        return Ok(items);
    }
    let right = items.split_off(items.len() / 2);
    let left = sorted(ctx, items, comparer)?;
    let right = sorted(ctx, right, comparer)?;
    let mut out = Array::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    while let (Some(a), Some(b)) = (left.peek(), right.peek()) {
        // Take from the right only when strictly before: equal elements keep
        // their order.
        let next = if compare(ctx, comparer, b, a)? == Ordering::Less {
            right.next()
        } else {
            left.next()
        };
        out.extend(next);
    }
    out.extend(left);
    out.extend(right);
    Ok(out)
}

fn compare(
    ctx: &NativeCallContext,
    comparer: &FnPtr,
    x: &Dynamic,
    y: &Dynamic,
) -> Fallible<Ordering> {
    let v = comparer.call_raw(ctx, None, [x.clone(), y.clone()])?;
    let by_sign = v
        .as_int()
        .or_else(|_| v.as_bool().map(|before| if before { -1 } else { 1 }));
    Ok(match by_sign {
        Ok(n) => n.cmp(&0),
        Err(_) => x.type_id().cmp(&y.type_id()),
    })
}
