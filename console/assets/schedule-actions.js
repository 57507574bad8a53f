// Shared by the schedules list and a schedule's page: its state badge and
// the Pause / Resume button.

import * as api from './api.js';
import { h, badge, toast } from './ui.js';
import { problemText } from './filters.js';

export function stateBadge(s) {
  return badge(s.paused ? 'paused' : 'active');
}

/**
 * The Pause or Resume button of schedule `s`; `onDone(schedule)` gets the
 * schedule as the server answers it.
 */
export function pauseButton(s, onDone) {
  const action = s.paused ? 'resume' : 'pause';
  const label = s.paused ? 'Resume' : 'Pause';
  const button = h('button', {
    type: 'button',
    class: `schedule-${action}`,
    text: label,
    'aria-label': `${label} schedule ${s.name}`,
    onclick: async () => {
      button.disabled = true;
      try {
        const updated = await api.post(`/schedules/${encodeURIComponent(s.name)}/${action}`);
        toast(`Schedule ${s.name} ${updated.paused ? 'paused' : 'resumed'}`);
        onDone(updated);
      } catch (error) {
        if (!(error instanceof api.ApiError && error.status === 401)) {
          toast(`Could not ${action} schedule ${s.name}: ${problemText(error)}`, 'error');
        }
        button.disabled = false;
      }
    },
  });
  return button;
}
