// Data that follows the server: loaded once, loaded again when an event says it changed.
// No timers: the only waits are the event streams' reconnects.

import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { follow, type Message, type StreamState } from "./sse";

export interface Loaded<T> {
  data: T | undefined;
  error: Error | undefined;
  /** Loads again; calls made while a load is under way fold into one more load. */
  reload: () => void;
}

export function useLoaded<T>(load: () => Promise<T>, key: string): Loaded<T> {
  const [state, setState] = useState<{ key: string; data?: T; error?: Error }>({ key });
  const loader = useRef(load);
  loader.current = load;
  const keyRef = useRef(key);
  keyRef.current = key;
  const busy = useRef(false);
  const again = useRef(false);

  const reload = useCallback(() => {
    if (busy.current) {
      again.current = true;
      return;
    }
    busy.current = true;
    const k = keyRef.current;
    loader
      .current()
      .then(
        (data) => {
          if (k === keyRef.current) setState({ key: k, data });
        },
        (error: Error) => {
          if (k === keyRef.current)
            setState((s) => ({ key: k, data: s.key === k ? s.data : undefined, error }));
        },
      )
      .finally(() => {
        busy.current = false;
        if (again.current) {
          again.current = false;
          reload();
        }
      });
  }, []);

  useEffect(reload, [key]);
  const fresh = state.key === key;
  return { data: fresh ? state.data : undefined, error: fresh ? state.error : undefined, reload };
}

/** Follows an event stream while the component is shown; the stream's state for display. */
export function useStream(
  path: string | null,
  resumable: boolean,
  onMessage: (m: Message) => void,
  onOpen?: () => void,
): StreamState {
  const [state, setState] = useState<StreamState>("connecting");
  const handlers = useRef({ onMessage, onOpen });
  handlers.current = { onMessage, onOpen };
  useEffect(() => {
    if (!path) return;
    return follow({
      path,
      resumable,
      onMessage: (m) => handlers.current.onMessage(m),
      onOpen: () => handlers.current.onOpen?.(),
      onState: setState,
    });
  }, [path, resumable]);
  return state;
}
