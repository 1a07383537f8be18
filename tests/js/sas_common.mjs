// The SAS part of a matrix-js-sdk verification request, shared by verify_client.mjs (in a
// room) and device_verify_client.mjs (to-device): start or accept, report the emoji
// ("@@SAS <json>") and confirm them (the bot decides whether they match).

import { say } from "./common.mjs";

// A promise of the request's phase once it is one of `phases`.
export function phaseReached(request, phases, { VerificationRequestEvent }) {
    return new Promise((resolve) => {
        const check = () => {
            if (phases.includes(request.phase)) {
                request.off(VerificationRequestEvent.Change, check);
                resolve(request.phase);
            }
        };
        request.on(VerificationRequestEvent.Change, check);
        check();
    });
}

// MODE=request: we start SAS once the other side is ready; MODE=accept: we accept and let it
// start. Returns whether the SAS verification completed.
export async function runSas(request, mode, cryptoApi) {
    const { VerificationPhase, VerifierEvent } = cryptoApi;
    let verifier;
    if (mode === "request") {
        const phase = await phaseReached(request, [VerificationPhase.Ready, VerificationPhase.Cancelled], cryptoApi);
        if (phase === VerificationPhase.Ready) verifier = await request.startVerification("m.sas.v1");
    } else {
        await request.accept();
        const phase = await phaseReached(request, [VerificationPhase.Started, VerificationPhase.Cancelled], cryptoApi);
        if (phase === VerificationPhase.Started) verifier = request.verifier;
    }
    if (!verifier) return false;
    verifier.on(VerifierEvent.ShowSas, (sas) => {
        say(`SAS ${JSON.stringify({ emoji: sas.sas.emoji.map(([symbol]) => symbol), decimal: sas.sas.decimal })}`);
        sas.confirm().catch(() => {});
    });
    try {
        await verifier.verify();
        return true;
    } catch {
        return false;
    }
}
