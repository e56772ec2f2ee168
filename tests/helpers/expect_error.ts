/**
 * Small assertions over node:assert/strict that return the error they caught, so a test can
 * check its class, message and exit code in one place.
 * @module
 */
import nodeAssert from "node:assert/strict";

/** A class of errors. */
// deno-lint-ignore no-explicit-any
type ErrorClass<E> = new (...args: any[]) => E;

/** Asserts that `fn` throws an instance of `type` whose message includes `text`; returns it. */
export function assertThrows<E extends Error>(
  fn: () => unknown,
  type: ErrorClass<E>,
  text = "",
): E {
  try {
    fn();
  } catch (e) {
    nodeAssert.ok(e instanceof type, `expected ${type.name}, got ${e}`);
    nodeAssert.ok(e.message.includes(text), `"${e.message}" does not include "${text}"`);
    return e;
  }
  throw new nodeAssert.AssertionError({ message: `expected ${type.name} to be thrown` });
}

/** Asserts that `fn` rejects with an instance of `type` whose message includes `text`. */
export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  type: ErrorClass<E>,
  text = "",
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    nodeAssert.ok(e instanceof type, `expected ${type.name}, got ${e}`);
    nodeAssert.ok(e.message.includes(text), `"${e.message}" does not include "${text}"`);
    return e;
  }
  throw new nodeAssert.AssertionError({ message: `expected ${type.name} to be thrown` });
}

/** Deep strict equality. */
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, message);
}

/** Truthiness. */
export function assert(value: unknown, message?: string): asserts value {
  nodeAssert.ok(value, message);
}
