Feature: Recovering the connection to the gateway
  As a trader whose bot runs unattended
  I want the connection to recover the same way every time
  So that a restart, an outage or a clash never leaves my bot blind

  Background:
    Given a simulated IB Gateway with account DU1234567
    And my bot is connected with client id 7 and streams AAPL market data

  Scenario: The gateway restarts
    When the gateway restarts after a 0.5 second outage
    Then the bot goes through "backoff" and is "connected" again
    And while the gateway was down the bot tried again at least every 0.25 seconds
    And AAPL market data was requested again

  Scenario: Nightly reset, connectivity restored with data lost
    When IB reports code 1100
    Then the bot is "lost"
    When IB reports code 1101
    Then the bot is "connected"
    And AAPL market data was requested again
    And the socket was never reopened

  Scenario: Connectivity restored with data kept
    When IB reports code 1100
    And IB reports code 1102
    Then the bot is "connected"
    And AAPL market data was not requested again

  Scenario: A data farm breaks and comes back
    When the "usfarm" data farm breaks
    Then the bot is "degraded"
    When the "usfarm" data farm is OK again
    Then the bot is "connected"

  Scenario: The gateway hangs
    When the gateway stops answering
    Then the bot drops the session because its heartbeat went unanswered
    When the gateway answers again
    Then the bot goes through "backoff" and is "connected" again

  Scenario: Another session holds our client id
    Given another program is connected with client id 7
    When the connection drops
    Then the bot is "connected" again with client id 8

  Scenario: The API port is reset
    When the gateway resets its API port
    Then the bot goes through "backoff" and is "connected" again
    And the bot tried the new port at once, without a backoff delay
    And the bot is connected on the new port

  Scenario: A wedged gateway is restarted through IBC, once
    Given the gateway runs under IBC and my bot may ask IBC to restart it
    When the gateway wedges: it takes connections and answers nothing
    Then the bot goes through "restarting" and is "connected" again
    And IBC was asked to restart the gateway exactly once

  Scenario: A connection the gateway refuses is never a reason to restart it
    Given the gateway runs under IBC and my bot may ask IBC to restart it
    When the gateway stops accepting connections for 2 seconds
    Then the bot goes through "backoff" and is "connected" again
    And IBC was never asked to restart the gateway
