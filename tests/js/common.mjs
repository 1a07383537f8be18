// Shared by the Node test clients: the Promise.withResolvers polyfill (matrix-js-sdk 43
// wants Node >= 22; Node 20 lacks only that), environment variables, and "@@" reports.

if (typeof Promise.withResolvers !== "function") {
    Promise.withResolvers = function withResolvers() {
        let resolve;
        let reject;
        const promise = new Promise((res, rej) => {
            resolve = res;
            reject = rej;
        });
        return { promise, resolve, reject };
    };
}

export const env = (name) => {
    const value = process.env[name];
    if (!value) throw new Error(`missing environment variable ${name}`);
    return value;
};

export const say = (line) => process.stdout.write(`@@${line}\n`);

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `check` (sync or async) until it is truthy; throws after `ms`.
export async function until(what, check, ms = 30000, every = 100) {
    for (const end = Date.now() + ms; Date.now() < end; await sleep(every)) {
        if (await check()) return;
    }
    throw new Error(`timed out waiting for ${what}`);
}

// Runs a script's main(): exit 0 when it resolves, 2 with the stack when it throws, 3 when it
// outlives JS_TIMEOUT_MS (90 s), so a hung SDK call never hangs the Python test.
export function runMain(main) {
    const timeout = setTimeout(() => {
        process.stderr.write("timed out\n");
        process.exit(3);
    }, Number(process.env.JS_TIMEOUT_MS || 90000));
    timeout.unref();
    main().then(
        () => process.exit(0),
        (err) => {
            process.stderr.write(`error: ${err && err.stack ? err.stack : err}\n`);
            process.exit(2);
        },
    );
}
